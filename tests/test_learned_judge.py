"""The learned judge: deterministic training on the example data, and judging through `ctsvqa judge`
like every other judge (verdicts stored, cache, identity = the head's content)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import duckdb
import numpy as np
import pytest

from adapters.judges import learned
from adapters.judges.prompts import Item
from adapters.judges.spec import JudgeSpec
from flows.cli import main
from tasks import judge_training as jt

SMALL = {"hidden": 8, "epochs": 30, "inner_folds": 2}


@pytest.fixture(scope="module")
def mini_wh(tmp_path_factory) -> Path:
    from tasks.upstream_import import import_upstream
    from tests.conftest import MINI

    db = tmp_path_factory.mktemp("learned") / "wh.duckdb"
    import_upstream(MINI, db)
    return db


@pytest.fixture(scope="module")
def heads(mini_wh, tmp_path_factory) -> dict[str, Path]:
    """Two trainings with seed 0 and one with seed 1, sharing one embedding cache file."""
    root = tmp_path_factory.mktemp("heads")
    cache = root / "emb.npz"
    out = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        jt.train(mini_wh, out=root / name, seed=seed, embed_cache=cache, params=SMALL)
        out[name] = root / name
    return out


def test_training_is_deterministic_and_writes_a_manifest(heads, mini_wh):
    a, b, c = ((heads[k] / "head.npz").read_bytes() for k in "abc")
    assert a == b                                        # same data + seed -> byte-identical head
    assert a != c                                        # another seed -> another head
    manifest = json.loads((heads["a"] / "manifest.json").read_text())
    assert manifest["head_sha256"] == hashlib.sha256(a).hexdigest()
    assert manifest["seed"] == 0 and manifest["target"] == "majority"
    assert manifest["data"]["runs"] == ["m3d", "merlin", "radfm"] and manifest["data"]["n_items"] == 23
    assert {"numpy", "scikit-learn", "sentence-transformers"} <= set(manifest["versions"])
    assert manifest == json.loads((heads["b"] / "manifest.json").read_text())
    head = learned.load_head(heads["a"] / "head.npz")
    assert 0.0 <= head.threshold <= 1.0 and head.abstain_low <= head.threshold <= max(head.abstain_high, head.threshold)


def test_training_on_one_judge_and_bad_target(mini_wh, heads, tmp_path):
    manifest = jt.train(mini_wh, target="qwen", out=tmp_path / "q", embed_cache=heads["a"].parent / "emb.npz",
                        params=SMALL)
    assert manifest["target"] == "qwen" and manifest["data"]["n_items"] == 23
    with pytest.raises(ValueError, match="--target must be one of"):
        jt.train(mini_wh, target="claude", out=tmp_path / "x", params=SMALL)


def test_volume_folds_keep_identical_items_together(mini_wh):
    items = jt.load_items(mini_wh)
    folds = jt.volume_folds(items, 2, salt="t")
    keys = items.keys()
    for key in set(keys):
        assert len(set(folds[keys == key])) == 1
    # radfm repeats m3d's "No" to the pleural-effusion question: a shared key across runs
    assert len(set(keys)) < len(keys)


def test_a_changed_head_is_a_new_judge(heads, tmp_path):
    spec_a = JudgeSpec("learned", "learned", "learned-v1", options={"head": str(heads["a"] / "head.npz")})
    spec_b = JudgeSpec("learned", "learned", "learned-v1", options={"head": str(heads["b"] / "head.npz")})
    spec_c = JudgeSpec("learned", "learned", "learned-v1", options={"head": str(heads["c"] / "head.npz")})
    assert spec_a.judge_id == spec_b.judge_id            # same content elsewhere: the same judge
    assert spec_a.judge_id != spec_c.judge_id
    moved = tmp_path / "head.npz"
    shutil.copy(heads["c"] / "head.npz", moved)
    assert JudgeSpec("learned", "learned", "learned-v1", options={"head": str(moved)}).judge_id == spec_c.judge_id
    missing = JudgeSpec("learned", "learned", "learned-v1", options={"head": str(tmp_path / "none.npz")})
    with pytest.raises(FileNotFoundError, match="ctsvqa judge-train"):
        missing.judge_id


def test_a_head_of_other_features_is_refused(heads, tmp_path):
    with np.load(heads["a"] / "head.npz") as data:
        arrays = {k: data[k] for k in data.files}
    arrays["features_version"] = np.array("learned-features-v0")
    (tmp_path / "old.npz").write_bytes(learned.head_bytes(arrays))
    with pytest.raises(ValueError, match="retrain"):
        learned.load_head(tmp_path / "old.npz")


def test_features_reuse_the_spatial_rules():
    x = learned.features([Item("Which side is the nodule on?", "On the left side.", "right side"),
                          Item("Which side is the nodule on?", "On the left side.", "Left")], learned.sbert_embed)
    rules = x[:, -learned.N_RULE_FEATURES:]
    assert rules[0, 1] == 1.0 and rules[1, 0] == 1.0     # spatial-rules says False, then True
    assert x.shape == (2, learned.N_FEATURES)


@pytest.mark.prefect
def test_cli_judges_with_a_learned_head_and_caches(prefect_server, mini_wh, heads, tmp_path, capsys):
    db = tmp_path / "wh.duckdb"
    shutil.copy(mini_wh, db)
    panel = tmp_path / "judges.yaml"
    panel.write_text(f"panel: mine\njudges:\n  - name: learned\n    provider: learned\n    model: learned-v1\n"
                     f"    options: {{head: {heads['a'] / 'head.npz'}}}\n")
    assert main(["judge", "--judges", str(panel), "--run", "m3d", "--db", str(db)]) == 0
    assert "learned: 8 pending, 0 from cache" in capsys.readouterr().out
    assert main(["judge", "--judges", str(panel), "--run", "radfm", "--db", str(db)]) == 0
    # radfm answers "No" to the pleural-effusion question three times, as m3d did: cached verdicts
    assert "learned: 8 pending, 3 from cache" in capsys.readouterr().out
    spec = JudgeSpec("learned", "learned", "learned-v1", options={"head": str(heads["a"] / "head.npz")})
    with duckdb.connect(str(db), read_only=True) as con:
        rows = con.execute("SELECT status, verdict, reason, source FROM judgments WHERE judge_id = ?",
                           [spec.judge_id]).fetchall()
        assert len(rows) == 16 and {r[3] for r in rows} >= {"cache"}
        assert all((s == "ok") == (v is not None) for s, v, _, _ in rows)
        assert any("P(correct)" in (r or "") for _, _, r, _ in rows)
        assert con.execute("SELECT count(*) FROM model_accuracy WHERE panel = 'mine'").fetchone() == (2,)
        settings = json.loads(con.execute("SELECT settings FROM judges WHERE judge_id = ?",
                                          [spec.judge_id]).fetchone()[0])
    assert settings["provider"] == "learned" and settings["options"]["head"].endswith("head.npz")
    # the same name with another head is another judge, and says so
    panel.write_text(panel.read_text().replace(str(heads["a"]), str(heads["c"])))
    assert main(["judge", "--judges", str(panel), "--run", "m3d", "--db", str(db)]) == 2
    assert "already belongs to judge" in capsys.readouterr().err


def test_the_preset_uses_the_shipped_head():
    from adapters.judges.spec import load_panel

    (spec,) = load_panel("offline-learned").judges
    manifest = json.loads((learned.HEAD_DIR / "manifest.json").read_text())
    assert manifest["head_sha256"] == hashlib.sha256(learned.DEFAULT_HEAD.read_bytes()).hexdigest()
    assert spec.identity_settings()["head_sha256"] == manifest["head_sha256"]
    head = learned.load_head(learned.DEFAULT_HEAD)
    assert learned.DEFAULT_HEAD.stat().st_size < 4_000_000 and head.layers


def test_cli_judge_train_writes_the_head(mini_wh, tmp_path, capsys):
    out = tmp_path / "head"
    assert main(["judge-train", "--db", str(mini_wh), "--out", str(out), "--seed", "3", "--target", "gpt"]) == 0
    said = capsys.readouterr().out
    assert "head written" in said and "gpt verdicts" in said
    assert json.loads((out / "manifest.json").read_text())["seed"] == 3
    empty = tmp_path / "empty.duckdb"
    assert main(["db", "migrate", "--db", str(empty)]) == 0
    assert main(["judge-train", "--db", str(empty), "--out", str(out)]) == 2
    assert "no upstream judgments to train on" in capsys.readouterr().err
    # the leave-one-out heads beside it, one per run, each without that run's items
    for run in ("m3d", "merlin", "radfm"):
        m = json.loads((out / "leave-one-out" / run / "manifest.json").read_text())
        assert m["left_out_run"] == run and run not in m["data"]["runs"]
    assert "leave-one-out heads written" in said


def test_a_head_without_a_run_never_saw_it_nor_its_twins(mini_wh):
    items = jt.load_items(mini_wh)
    rest = jt.without_run(items, "m3d")
    assert "m3d" not in set(rest.model.tolist())
    mine = set(items.keys()[items.model == "m3d"])
    assert not mine & set(rest.keys())                     # radfm's copies of m3d's answers left out too
    assert len(rest) < int((items.model != "m3d").sum())
    with pytest.raises(ValueError, match="no upstream run 'gpt5'"):
        jt.without_run(items, "gpt5")


@pytest.fixture(scope="module")
def loo_heads(mini_wh, heads, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("loo")
    jt.train_all(mini_wh, out=root, embed_cache=heads["a"].parent / "emb.npz", params=SMALL)
    return root


@pytest.mark.prefect
def test_leave_one_out_scores_each_run_with_the_head_that_never_saw_it(prefect_server, mini_wh, loo_heads,
                                                                       tmp_path, capsys):
    from adapters.judges.spec import JudgeConfigError, load_panel

    db = tmp_path / "wh.duckdb"
    shutil.copy(mini_wh, db)
    panel = tmp_path / "judges.yaml"
    panel.write_text(f"panel: loo\njudges:\n  - name: learned-loo\n    provider: learned\n    model: learned-v1\n"
                     f"    options: {{head: {loo_heads / 'head.npz'}, leave_one_out: true}}\n")
    (spec,) = load_panel(panel).judges
    assert spec.share_verdicts is False                      # a verdict per run: nothing shared between runs
    assert set(spec.identity_settings()["leave_one_out_sha256"]) == {"m3d", "merlin", "radfm"}
    assert main(["judge", "--judges", str(panel), "--db", str(db)]) == 0
    judge = learned.LearnedJudge(spec)
    with duckdb.connect(str(db), read_only=True) as con:
        rows = con.execute("SELECT r.name, q.question, q.answer, p.text, j.reason, j.source FROM judgments j "
                           "JOIN runs r USING (run_id) JOIN predictions p USING (run_id, qid) "
                           "JOIN questions q ON q.dataset_id = r.dataset_id AND q.qid = j.qid "
                           "WHERE j.judge_id = ?", [spec.judge_id]).fetchall()
    assert len(rows) == 23 and {r[5] for r in rows} == {"judge"}
    scored = [r for r in rows if r[4] != "empty prediction"]          # an empty answer needs no head
    assert len(scored) >= 20
    for run, question, answer, prediction, reason, _ in scored:
        assert f"(head trained without {run}'s verdicts)" in reason
        x = learned.features([Item(question, answer, prediction, run)], learned.sbert_embed)
        assert f"P(correct) {judge.loo[run].predict_proba(x)[0]:.3f}" in reason
    # the report says which runs were scored held out
    assert main(["report", "--db", str(db)]) == 0
    assert "with heads trained without each one's verdicts" in capsys.readouterr().out
    panel.write_text(panel.read_text() + "    share_verdicts: true\n")
    with pytest.raises(JudgeConfigError, match="cannot share verdicts between runs"):
        load_panel(panel)


def test_the_preset_scores_the_published_runs_held_out():
    from adapters.judges.spec import load_panel

    (spec,) = load_panel("offline-learned").judges
    loo = spec.identity_settings()["leave_one_out_sha256"]
    assert set(loo) == {"m3d", "med3dvlm", "merlin", "radfm", "vila_m3_vista3d"} and not spec.share_verdicts
    for run, sha in loo.items():
        manifest = json.loads((learned.HEAD_DIR / "leave-one-out" / run / "manifest.json").read_text())
        assert manifest["head_sha256"] == sha and manifest["left_out_run"] == run
        assert run not in manifest["data"]["runs"]
