"""Family environments for tests, made by the real `adapters.models.environments.create` under a temporary
$CTSVQA_ENVS, so the real worker runs in an interpreter prefix of its own.

- `make_family_env(root, family)`: a venv with numpy only (installed by pip), nothing of ours: proves the
  worker and a numpy adapter need nothing else.
- `make_family_env(root, family, inherit=True)`: a venv that sees this interpreter's site-packages behind
  its own (a .pth file), for fakes that need torch/transformers (the six families' fakes in
  tests/fake_models/<family>/): its own prefix and interpreter, no multi-GB install.

Adapters whose class sets `environment` run through the worker by default, so their end-to-end tests
need the family env (or `--env current`). With the `family_envs` fixture (import it into the test module):

    from tests.worker_env import family_envs  # noqa: F401  (a fixture)

    def test_ctchat_answers_through_ctsvqa_infer(prefect_server, family_envs, ...):
        family_envs("ctchat")              # $CTSVQA_ENVS -> a session root holding an inherit env for ctchat
        assert main(["infer", "--model", "ctchat", ...]) == 0      # runs in a worker in that env

CTSVQA_FAKE_FAULT=crash|hang (the fakes honour it in generate) then exercises the crash/hang paths.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import pytest

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


@pytest.fixture
def family_envs(tmp_path_factory, monkeypatch) -> Callable[[str], Path]:
    """Call with a family name: builds its inherit env once per session under one root (in the session's
    base temp folder) and points $CTSVQA_ENVS there for this test (subprocesses inherit it)."""
    root = tmp_path_factory.getbasetemp() / "family-envs"
    monkeypatch.setenv("CTSVQA_ENVS", str(root))

    def make(family: str) -> Path:
        return make_family_env(root, family, inherit=True)

    return make


def crash_hang_then_retry(tmp_path: Path, monkeypatch, model: str, code_dir: Path, checkpoint: Path,
                          options: dict | None = None) -> None:
    """A family's adapter through the real worker in its env (the caller made it with `family_envs`), on
    one phantom volume: the fake's generate crashing (exit 3) and then hanging must each store every
    question as an error with the reason (the worker restarted or killed in between), and
    `--retry-failed` without a fault must then answer all of them in the same run."""
    import duckdb

    from adapters.datasets.phantom import generate
    from tasks.inference import InferRequest, run_inference
    from tasks.upstream_import import import_upstream

    generate(tmp_path / "ph", 1, 13, "small")
    db = tmp_path / "wh.duckdb"
    import_upstream(tmp_path / "ph", db)
    base = dict(model=model, code_dir=str(code_dir), checkpoint=str(checkpoint), limit_volumes=1)
    opts = dict(options or {})

    def stored() -> list[tuple]:
        with duckdb.connect(str(db), read_only=True) as con:
            return con.execute("SELECT status, reason FROM predictions JOIN runs USING (run_id) WHERE source = 'inference'").fetchall()

    monkeypatch.setenv("CTSVQA_FAKE_FAULT", "crash")
    crashed = run_inference(db, InferRequest(**base, options=opts))
    assert crashed.ok == 0 and crashed.error > 0
    assert all(s == "error" and "worker crashed (exit 3)" in r for s, r in stored()), stored()[:1]
    monkeypatch.setenv("CTSVQA_FAKE_FAULT", "hang")
    # the timeout is how to run, not what to answer: the same run (a busy machine gets the default)
    hung = run_inference(db, InferRequest(**base, options={**opts, "worker_timeout": 5}, retry_failed=True))
    assert hung.ok == 0 and hung.error == crashed.error
    assert all(s == "error" and "timed out after 5" in r for s, r in stored()), stored()[:1]
    monkeypatch.delenv("CTSVQA_FAKE_FAULT")
    fixed = run_inference(db, InferRequest(**base, options=opts, retry_failed=True))
    assert fixed.run_id == crashed.run_id and fixed.ok == crashed.error and fixed.error == 0
    assert {s for s, _ in stored()} == {"ok"}


def merlin_env_python() -> Path:
    """The Merlin family environment's python, built once per machine with the user's command
    (`ctsvqa env create merlin`, about 3 minutes and 6 GB from PyPI and the local torch wheel) where it is
    not ready; CTSVQA_MERLIN_PYTHON names another, CTSVQA_ENV_TESTS=0 skips what needs it."""
    import subprocess
    import sys

    if os.environ.get("CTSVQA_MERLIN_PYTHON"):
        return Path(os.environ["CTSVQA_MERLIN_PYTHON"])
    if not environments.status("merlin").ready:
        if os.environ.get("CTSVQA_ENV_TESTS") == "0":
            pytest.skip("no Merlin environment and CTSVQA_ENV_TESTS=0: run `ctsvqa env create merlin`")
        repo = Path(__file__).resolve().parent.parent
        done = subprocess.run([sys.executable, "-m", "flows.cli", "env", "create", "merlin"], cwd=repo,
                              env={**os.environ, "PYTHONPATH": str(repo)}, capture_output=True, text=True,
                              timeout=3600)
        assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    status = environments.status("merlin")
    assert status.ready, status.reason
    return status.python


@pytest.fixture(scope="session")
def merlin_python() -> Path:
    return merlin_env_python()
