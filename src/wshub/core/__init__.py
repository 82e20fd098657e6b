"""The hub core: sessions, routing, fan-out and recovery. Knows no transport, no storage engine."""
