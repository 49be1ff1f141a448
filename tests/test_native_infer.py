"""Both tiny native models (MedGemma, Lingshu: random weights, real from_pretrained of model and
processor) answer a phantom data set through `ctsvqa infer`: the CLI, the Prefect flow, the runner, the
preprocess step that builds their recipe input, and the warehouse."""

from __future__ import annotations

import json

import duckdb
import pytest

from adapters.datasets.phantom import generate
from flows.cli import main
from tasks.upstream_import import import_upstream
from tests.tiny_vlms import build_tiny_lingshu, build_tiny_medgemma


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


@pytest.mark.parametrize("model,builder,recipe", [("medgemma", build_tiny_medgemma, "medgemma@1"),
                                                  ("lingshu", build_tiny_lingshu, "lingshu@1")])
def test_tiny_native_model_answers_through_ctsvqa_infer(prefect_server, tmp_path, capsys, model, builder, recipe):
    generate(tmp_path / "ph", 2, 13, "small")
    db = tmp_path / "wh.duckdb"
    import_upstream(tmp_path / "ph", db)
    ckpt = builder(tmp_path / model)
    args = ["infer", "--model", model, "--checkpoint", str(ckpt), "--limit-volumes", "1", "--batch-size", "4",
            "--option", "max_new_tokens=6", "--db", str(db)]
    assert main(args) == 0, capsys.readouterr().err
    con = duckdb.connect(str(db), read_only=True)
    try:
        (n_q,) = con.execute("SELECT count(*) FROM questions WHERE volume = (SELECT volume FROM volumes "
                             "ORDER BY position LIMIT 1)").fetchone()
        preds = con.execute("SELECT p.status, p.text, p.provenance, r.config FROM predictions p JOIN runs r "
                            "USING (run_id) WHERE r.name = ?", [model]).fetchall()
        built = con.execute("SELECT count(*) FROM model_inputs WHERE recipe = ? AND status = 'ok'",
                            [model]).fetchone()[0]
    finally:
        con.close()
    assert built == 1                                     # only the recipe and the volume the run needed
    assert len(preds) == n_q and all(status == "ok" and text is not None for status, text, _, _ in preds)
    provenance, config = json.loads(preds[0][2]), json.loads(preds[0][3])
    assert provenance["recipe"] == recipe
    identity = config["identity"] if "identity" in config else config
    assert identity["checkpoint"]["sha256"] and identity["generation"]["max_new_tokens"] == 6
    # the same configuration again: nothing left to answer, nothing answered twice
    assert main(args) == 0
    assert "nothing to do" in capsys.readouterr().out
