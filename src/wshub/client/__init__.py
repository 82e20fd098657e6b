"""The Python client SDK (asyncio) and the command-line tools built on it."""
