#!/usr/bin/env bash
# On a machine with network: the wheels gpu/run-suite.sh installs on a GPU machine without one.
# torch itself is not fetched (a CUDA build is GBs; the GPU machine is expected to have it).
#   gpu/fetch-wheels.sh [PYTHON_VERSION]    e.g. 3.11 (default: this python's)
set -euo pipefail
cd "$(dirname "$0")/.."
version=${1:-$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')}
python3 -m pip download -q -d gpu/wheels --only-binary=:all: --python-version "$version" \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform any \
  nvidia-ml-py psutil paramiko tabulate pyyaml pytest hypothesis py-spy setuptools
ls gpu/wheels
