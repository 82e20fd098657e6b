"""Presence implementations: ``memory`` (one process), ``redis`` (many nodes)."""
