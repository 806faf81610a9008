#!/usr/bin/env bash
# Create ./.venv and install ancer (editable, with test tools and the diffusion extra) at the
# pinned versions of constraints.txt. Idempotent: reinstalls only when pyproject.toml or
# constraints.txt change.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
stamp=.venv/.ancer-setup
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setting up .venv (PyTorch and friends; a few minutes the first time)..." >&2
  if ! .venv/bin/python -m pip install --disable-pip-version-check \
      -c constraints.txt -e ".[test,diffusion]" > .venv/setup.log 2>&1; then
    grep -v "^WARNING: Location" .venv/setup.log >&2
    echo "error: installing ancer into .venv failed (log above, also in .venv/setup.log)" >&2
    exit 1
  fi
  .venv/bin/python -c "import ancer_cli, torch, torchvision"
  echo "$want" > "$stamp"
fi
