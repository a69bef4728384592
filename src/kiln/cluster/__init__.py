"""kiln on Kubernetes: BuildConfig/Build CRDs, the controller, build pods and in-pod strategies."""
