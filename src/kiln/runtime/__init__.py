"""Running images (``kiln run``, and the test node agent's containers) in the rootless sandbox."""
