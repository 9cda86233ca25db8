#!/usr/bin/env bash
# The GPU suite in one call, for a machine with one NVIDIA GPU and no network (e.g. one H200).
#
#   gpu/run-suite.sh            install from this tree (+ gpu/wheels), run every step, write docs/gpu.md
#   gpu/run-suite.sh --dry-run  no install, no GPU: check every step is wired (CI runs this;
#                               with .venv/bin/python, or $PYTHON)
#
# Install: a venv (.gpu-venv) that sees the machine's own packages (its CUDA torch), ddpcheck
# from this working tree (editable, no index), and, for each requirement the machine lacks,
# a wheel from $WHEELS (default gpu/wheels; gpu/fetch-wheels.sh fills it on a networked machine).
# Then gpu/suite.py runs the steps under one deadline ($DEADLINE_S, default 450 s: under 8 min
# with the install) and writes what it saw to $OUT (default docs/gpu.md).
set -euo pipefail
cd "$(dirname "$0")/.."

dry=0
[ "${1:-}" = "--dry-run" ] && dry=1
python=${PYTHON:-python3}
wheels=${WHEELS:-gpu/wheels}
out=${OUT:-docs/gpu.md}
deadline=${DEADLINE_S:-450}

if [ "$dry" = 1 ]; then
  # the checkout's own virtualenv (README's set-up) unless PYTHON says otherwise
  [ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ] && python=.venv/bin/python
  "$python" -c "import torch, ddpcheck" 2>/dev/null || {
    echo "ddpcheck gpu suite: $python cannot import torch and ddpcheck: set PYTHON to the" \
         "interpreter of the README's set-up (.venv/bin/python)" >&2
    exit 2
  }
  exec "$python" gpu/suite.py --dry-run --out "${OUT:-/dev/stdout}" --deadline "$deadline"
fi

started=$(date +%s)
if [ ! -x .gpu-venv/bin/python ]; then
  "$python" -m venv --system-site-packages .gpu-venv
fi
venv=.gpu-venv/bin/python
# Each requirement: the import name and the distribution (its wheel in $wheels when missing).
missing=()
for pair in torch:torch pynvml:nvidia-ml-py psutil:psutil paramiko:paramiko tabulate:tabulate \
            yaml:pyyaml pytest:pytest hypothesis:hypothesis setuptools:setuptools; do
  module=${pair%%:*} dist=${pair#*:}
  "$venv" -c "import $module" 2>/dev/null || missing+=("$dist")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "# installing from $wheels: ${missing[*]}" >&2
  "$venv" -m pip install -q --no-index --find-links "$wheels" "${missing[@]}" || {
    echo "ddpcheck gpu suite: cannot install ${missing[*]} without network: put their wheels" \
         "in $wheels (gpu/fetch-wheels.sh on a networked machine)" >&2
  }
fi
command -v py-spy >/dev/null 2>&1 || "$venv" -m pip install -q --no-index --find-links "$wheels" \
  py-spy 2>/dev/null || echo "# py-spy not installed: hang stacks will say so" >&2
"$venv" -m pip install -q --no-index --no-deps --no-build-isolation -e . >&2
left=$((deadline - ($(date +%s) - started)))
exec "$venv" gpu/suite.py --out "$out" --deadline "$left"
