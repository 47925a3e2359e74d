"""mera-eval: run the MERA Multi benchmark against OpenAI-compatible endpoints."""

__version__ = "0.1.0"
