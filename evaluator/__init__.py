"""mera-eval: run the MERA Multi benchmark against OpenAI-compatible endpoints."""
