"""Family environments for tests, made by the real `adapters.models.environments.create` under a temporary
$CTSVQA_ENVS, so the real worker runs in an interpreter prefix of its own.

- `make_family_env(root, family)`: a venv with numpy only (installed by pip), nothing of ours: proves the
  worker and a numpy adapter need nothing else.
- `make_family_env(root, family, inherit=True)`: a venv that sees this interpreter's site-packages behind
  its own (a .pth file), for fakes that need torch/transformers (the six families' fakes in
  tests/fake_models/<family>/): its own prefix and interpreter, no multi-GB install.

Parametrize over families like this:

    @pytest.fixture(scope="session")
    def envs_root(tmp_path_factory):
        return tmp_path_factory.mktemp("envs")

    def test_family_through_worker(envs_root, monkeypatch, family):
        make_family_env(envs_root, family, inherit=True)
        monkeypatch.setenv("CTSVQA_ENVS", str(envs_root))
        ...  # ctsvqa infer --model <name> ... with CTSVQA_ENVS in the subprocess env
"""

from __future__ import annotations

import os
from pathlib import Path

from adapters.models import environments


def make_family_env(root: Path, family: str, inherit: bool = False, requirements: str | None = None) -> Path:
    """Build (once per root) and return the env's directory. The requirements file is written beside it."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    req = root / f"{family}.requirements.txt"
    text = requirements if requirements is not None else ("" if inherit else "numpy\n")
    text = "# import: numpy\n" + text
    if not req.is_file() or req.read_text() != text:
        req.write_text(text)
    saved = os.environ.get("CTSVQA_ENVS")
    os.environ["CTSVQA_ENVS"] = str(root)
    try:
        st = environments.status(family)
        if not st.ready:
            st = environments.create(family, requirements=req, inherit_site_packages=inherit)
    finally:
        if saved is None:
            os.environ.pop("CTSVQA_ENVS", None)
        else:
            os.environ["CTSVQA_ENVS"] = saved
    assert st.ready, st.reason
    return st.path
