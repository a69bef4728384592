"""kiln's test-only node agent (a tiny stand-in for the kubelet): see dev/node_agent.py."""
