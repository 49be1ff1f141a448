"""The stand-ins under tests/fake_models/ claim the upstream layout: every public module-level class and
function they define must be in the real checkout at the same file, and every public function or
method of theirs that the real code also has must take the same parameters (names, order, which have
defaults, *args/**kwargs), except the documented deviations in signatures.ALLOWED. Read with `ast`
(tests/real_code/signatures.py, no import of either tree); skips a family whose checkout is not under
$CTSVQA_UPSTREAM_CODE."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.real_code.test_conformance import CODE_ROOT

REPO = Path(__file__).resolve().parents[2]
FAKES = REPO / "tests" / "fake_models"
# fake folder -> the real checkout's folder under CODE_ROOT
TREES = {"m3d": "m3d", "med3dvlm": "med3dvlm", "ctchat/CT-CHAT": "ctchat/CT-CHAT",
         "ctchat/CT-CLIP": "ctchat/CT-CLIP", "radfm": "radfm", "vila-m3/VILA": "vila-m3/VILA",
         "vila-m3/scaling_on_scales": "vila-m3/scaling_on_scales"}


def compare(python: str, fake: Path, real: Path):
    done = subprocess.run([python, "-m", "tests.real_code.signatures", str(fake), str(real)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


@pytest.mark.parametrize("fake", list(TREES))
def test_a_fake_has_the_real_files_classes_and_signatures(fake):
    real_root = CODE_ROOT / TREES[fake]
    if not real_root.is_dir():
        pytest.skip(f"no checkout at {real_root} (shared/research/models-code.md; CTSVQA_UPSTREAM_CODE)")
    problems = compare(sys.executable, FAKES / fake, real_root)
    if isinstance(problems, dict):              # code newer than this Python (Med3DVLM: PEP 701 f-strings)
        from adapters.models.environments import EnvError, find_python

        try:
            newer, _ = find_python(">=3.12")
        except EnvError as exc:
            pytest.skip(f"{problems['syntax_error']}; no Python >= 3.12 to parse it: {exc}")
        problems = compare(newer, FAKES / fake, real_root)
    assert problems == []
