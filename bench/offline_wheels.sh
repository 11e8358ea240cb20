#!/usr/bin/env bash
# The wheels bench/gpu_check.sh needs on an offline GPU node, downloaded on a machine with the package index:
#   bash bench/offline_wheels.sh DIR [--python-version 3.12] [--platform manylinux_2_28_x86_64 ...] [--have FREEZE.txt]
# --python-version: the node's Python (default 3.12); --platform: wheel platform tags, repeatable (default: the
# manylinux x86_64 tags 2_28, 2_27, 2_17, 2014, 1, and `any`); --have: the node's `pip freeze`, whose packages are
# not bundled where they satisfy the requirements (bench/gpu-node-freeze.txt is the borrowed H100 node's). Binary
# wheels only, one version of each package, torch never (the node's own build is used), the project's own wheel
# always. It prints each wheel and the bundle's size (it fails over 60 MB). Then, on the node:
#   bash bench/gpu_check.sh --wheels DIR
# What is resolved and why: bench/offline_bundle.py.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
exec "$PYTHON" bench/offline_bundle.py build "$@"
