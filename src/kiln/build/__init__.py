"""The build engine: plan, executor, snapshotter, cache, build context."""
