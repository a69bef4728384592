"""Dockerfile frontend."""
