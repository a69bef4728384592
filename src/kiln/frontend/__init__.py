"""Frontends: each one turns a build definition (Dockerfile, S2I, ...) into a build plan."""
