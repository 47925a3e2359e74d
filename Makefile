# The two entry points the README promises. Both install what they need first (idempotent).
.PHONY: setup demo test lint

setup:
	bash scripts/setup-dev.sh

# The main job on the embedded default: tiny Gemma-4 on the CPU dev server, bundled sample data.
demo: setup
	.venv/bin/python scripts/demo.py

# The whole test suite, real vLLM CPU server tests included.
test: setup
	bash scripts/test.sh
