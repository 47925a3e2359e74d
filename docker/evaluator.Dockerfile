# mera-eval: the async MERA Multi client, scorer and report writer. Evaluator only: no torch, no vLLM
# (pyproject's base dependencies are exactly the evaluator's). Talks to any OpenAI-compatible endpoint.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/root/.cache/huggingface

WORKDIR /opt/mera-multi

COPY pyproject.toml ./
COPY evaluator ./evaluator
COPY mera_multi ./mera_multi
# `pip install .` resolves the evaluator's dependencies from pyproject (av and soundfile wheels bundle
# their native libraries, so no system packages are needed). The import check fails the build if torch
# or vLLM ever creep in.
RUN pip install --no-cache-dir . \
    && mera-eval --version \
    && mera-eval tasks > /dev/null \
    && python -c "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) for m in ('torch', 'vllm')))"

# Run folders (store.sqlite, exports, reports, submission zip) go here; compose mounts ./runs.
VOLUME ["/runs"]

ENTRYPOINT ["mera-eval"]
CMD ["--help"]
