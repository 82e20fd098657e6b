"""Store implementations: ``memory`` (default in-process), ``sqlite`` (durable, single node)."""
