"""Build triggers: what starts a build without a user."""
