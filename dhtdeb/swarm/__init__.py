"""Swarm download: files from peers in verified pieces, the mirror as fallback and web seed."""
