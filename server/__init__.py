"""mera-serve: vLLM's OpenAI-compatible server configured for Gemma-4 and MERA Multi."""

__version__ = "0.1.0"
