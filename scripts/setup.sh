#!/usr/bin/env bash
# Create .venv and install ctsvqa with its test tools. Safe to re-run.
# torch goes in first and pinned: with no torch present, pip resolves a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/pip install --quiet torch==2.13.0
.venv/bin/pip install --quiet -e '.[test]'
