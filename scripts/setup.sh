#!/usr/bin/env bash
# Create .venv and install ctsvqa with its test tools. Safe to re-run.
# torch goes in first and pinned: with no torch present, pip resolves a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/pip install --quiet torch==2.13.0
.venv/bin/pip install --quiet -e '.[test]'
# WordNet 3.0 for METEOR (ctsvqa score) comes from Debian; nothing is downloaded at run time.
if [ ! -f /usr/share/wordnet/data.noun ] && [ -z "${CTSVQA_WORDNET:-}" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        (apt-get install -y -qq wordnet-base >/dev/null 2>&1 || { apt-get update -qq >/dev/null && apt-get install -y -qq wordnet-base >/dev/null; }) \
            || echo "setup: could not install wordnet-base; METEOR needs it (see README)" >&2
    else
        echo "setup: METEOR needs WordNet 3.0: sudo apt-get install wordnet-base, or set CTSVQA_WORDNET" >&2
    fi
fi
