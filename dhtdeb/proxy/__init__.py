"""The apt-facing HTTP proxy."""
