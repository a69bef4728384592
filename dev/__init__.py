"""Development-only tooling for kiln: a local Kubernetes control plane and a test-only node agent.

Nothing here is shipped: `src/kiln` never imports `dev`. See docs/dev-cluster.md.
"""
