"""OCI image core: digests, models, the content store, the layer codec."""
