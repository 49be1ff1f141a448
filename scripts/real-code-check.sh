#!/usr/bin/env bash
# The remote-code models against their real repositories: finds the checkouts (fetches nothing), builds
# the family environments that are missing or stale, then runs the conformance suite (tests/real_code/)
# and the fakes-match-the-real-code checks. Families without a checkout are skipped, saying so.
#
#   bash scripts/real-code-check.sh [FAMILY ...]        # default: all six
#
# Checkouts: $CTSVQA_UPSTREAM_CODE (default ~/.cache/ctsvqa/upstream-code), one folder per family at the
# commits in shared/research/models-code.md: m3d/, med3dvlm/, ctchat/{CT-CHAT,CT-CLIP}/, radfm/,
# vila-m3/{VILA,scaling_on_scales}/ (Merlin's code is its PyPI package, installed in its env).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/ctsvqa ] || bash scripts/setup.sh
code="${CTSVQA_UPSTREAM_CODE:-$HOME/.cache/ctsvqa/upstream-code}"
families=("$@")
[ ${#families[@]} -gt 0 ] || families=(m3d med3dvlm ctchat radfm vila-m3 merlin)
declare -A marker=([m3d]=m3d/LaMed [med3dvlm]=med3dvlm/src/model [ctchat]=ctchat/CT-CLIP/transformer_maskgit
                   [radfm]=radfm/Quick_demo [vila-m3]=vila-m3/scaling_on_scales [merlin]=)
selected=()
for fam in "${families[@]}"; do
    if [ -z "${marker[$fam]+x}" ]; then echo "real-code-check: unknown family $fam" >&2; exit 2; fi
    if [ -n "${marker[$fam]}" ] && [ ! -e "$code/${marker[$fam]}" ]; then
        echo "real-code-check: $fam: no checkout under $code (see shared/research/models-code.md); skipped" >&2
        continue
    fi
    ready=$(.venv/bin/python -c "from adapters.models import environments as e; print(e.status('$fam').ready)")
    if [ "$ready" != True ]; then
        echo "real-code-check: building the $fam environment" >&2
        start=$(date +%s)
        .venv/bin/ctsvqa env create "$fam"
        echo "real-code-check: $fam environment built in $(( $(date +%s) - start )) s" >&2
    fi
    selected+=("$fam")
done
[ ${#selected[@]} -gt 0 ] || { echo "real-code-check: no family to check" >&2; exit 2; }
CTSVQA_UPSTREAM_CODE="$code" CTSVQA_REAL_FAMILIES="${selected[*]}" .venv/bin/python -m pytest tests/real_code -rs
