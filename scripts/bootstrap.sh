#!/usr/bin/env bash
# Set up (or refresh) the project's virtual environment in .venv: torch, then
# discograd in editable mode with its dev, plot and data extras. Safe to re-run: it
# only reinstalls when pyproject.toml changed.
#
#   PYTHON=python3.12 bash scripts/bootstrap.sh     # choose the interpreter
#   DISCOGRAD_TORCH="torch==2.5.1" bash scripts/bootstrap.sh   # choose torch
#   DISCOGRAD_EXTRAS=ray bash scripts/bootstrap.sh  # more extras (CI: ray, for the Ray test)
#
# torch is installed first and pinned (default torch==2.13.0): where pip is
# configured with a local CPU wheel of that version it takes it, so no CUDA
# packages are downloaded; elsewhere it is the normal PyPI build. If that pin
# has no build for this platform, the newest torch>=2.2 is installed instead.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${DISCOGRAD_TORCH:-torch==2.13.0}"
EXTRAS="dev,plot,data${DISCOGRAD_EXTRAS:+,$DISCOGRAD_EXTRAS}"
VENV=.venv

"$PYTHON" - <<'PY'
import sys
if sys.version_info < (3, 10):
    sys.exit(f"discograd needs Python >= 3.10, this is {sys.version.split()[0]}")
PY

if [ ! -x "$VENV/bin/python" ]; then
    echo "bootstrap: creating $VENV with $("$PYTHON" --version)"
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --quiet --disable-pip-version-check)

if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    echo "bootstrap: installing $TORCH_SPEC"
    # shellcheck disable=SC2086  # the spec may carry pip options on purpose
    "${PIP[@]}" install $TORCH_SPEC || {
        echo "bootstrap: $TORCH_SPEC is not available here; installing torch>=2.2"
        "${PIP[@]}" install "torch>=2.2"
    }
fi

stamp="$VENV/.discograd-installed"
want="$(cat pyproject.toml | cksum) $EXTRAS"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] \
    || ! "$VENV/bin/python" -c "import discograd" 2>/dev/null; then
    echo "bootstrap: installing discograd (editable) with extras $EXTRAS"
    "${PIP[@]}" install -e ".[$EXTRAS]"
    echo "$want" > "$stamp"
fi
echo "bootstrap: ready ($("$VENV/bin/python" -c 'import torch, discograd; print("torch", torch.__version__, "| discograd", discograd.__version__)'))"
