"""ASGI guard installed into vLLM's own app through `--middleware` (see app.py)."""
