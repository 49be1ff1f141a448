#!/usr/bin/env bash
# Create .venv and install ctsvqa with its test tools. Safe to re-run.
# torch goes in first and pinned: with no torch present, pip resolves a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/pip install --quiet torch==2.13.0
.venv/bin/pip install --quiet -e '.[test,ray]'     # ray: the sharding tests (~15 s, ~240 MB)
# Debian packages: WordNet 3.0 for METEOR (ctsvqa score; nothing is downloaded at run time) and headless
# Chromium, which the report test opens the HTML report in. Installed when we are root; else we say how.
missing=()
[ -f /usr/share/wordnet/data.noun ] || [ -n "${CTSVQA_WORDNET:-}" ] || missing+=(wordnet-base)
command -v chromium >/dev/null || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        { apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 \
          || { apt-get update -qq >/dev/null && apt-get install -y -qq "${missing[@]}" >/dev/null; }; } \
            || echo "setup: could not install ${missing[*]} (see README)" >&2
    else
        echo "setup: please install ${missing[*]} (sudo apt-get install ${missing[*]}); METEOR needs" \
             "wordnet-base, the report test needs chromium" >&2
    fi
fi
