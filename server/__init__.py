"""mera-serve: vLLM's OpenAI-compatible server configured for Gemma-4 and MERA Multi."""
