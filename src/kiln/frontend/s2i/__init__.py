"""The Source-to-Image frontend: openshift/source-to-image's build strategy, on kiln's one engine.

An S2I build (source + builder image -> application image) compiles, like a Dockerfile, to a
kiln Plan that the executor runs rootless; nothing needs a daemon. The modules, pure first:

- ``config``: the request (``S2IRequest``) and s2i's text formats (environment files, mappings);
- ``users``: the assemble user and ``--allowed-uids``;
- ``labels``: the labels read from builders and written on outputs;
- ``scripts``: where assemble/run/save-artifacts/usage/assemble-runtime come from;
- ``ignore``: ``.s2iignore``;
- ``recipe``: the build as Dockerfile-shaped operations, rendered as a Plan or as a Dockerfile;
- ``compile``: an S2I build -> a Recipe;
- ``source``, ``prepare``, ``previous``, ``build``, ``usage``: the I/O around them.

See docs/s2i.md.
"""
