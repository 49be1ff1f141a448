"""The blind ceiling of a phantom v2 set, as the report shows it: the blind-oracle run per template
(template_accuracy view) beside the template's answer count and chance, recomputed here by hand."""

from __future__ import annotations

import io
import json
from collections import Counter

import pytest
from rich.console import Console

import warehouse
from adapters.datasets.phantom import answer_options, generate
from adapters.judges.spec import load_panel
from tasks import blind_ceiling, judging
from tasks.inference import InferRequest, run_inference
from tasks.report import print_report, report_data
from tasks.upstream_import import import_upstream


@pytest.fixture(scope="module")
def judged(tmp_path_factory):
    root = tmp_path_factory.mktemp("ceiling")
    cases = generate(root / "ph", 8, 20, "small", version=2)
    db = root / "wh.duckdb"
    import_upstream(root / "ph", db)
    run_inference(db, InferRequest(model="blind-oracle"))
    panel = load_panel("offline")
    judging.register_panel(db, panel)
    for spec in panel.judges:
        judging.judge_runs(db, spec, ["blind-oracle"])
    return db, cases


def test_template_rows_match_a_hand_count(judged):
    db, cases = judged
    asked = Counter(qa["question"] for c in cases for qa in c.qa)
    volumes = Counter(q for c in cases for q in {qa["question"] for qa in c.qa})
    answers = {q: Counter(qa["answer"].lower() for c in cases for qa in c.qa if qa["question"] == q) for q in asked}
    with warehouse.reader(db) as con:
        table = blind_ceiling.rows(con, "phantom-v2-small-s20", "offline")
        verdicts = dict(con.execute(
            "SELECT q.question || '|' || q.qid, v.majority_correct FROM jury_verdicts v JOIN questions q "
            "ON q.dataset_id = v.dataset AND q.qid = v.qid WHERE v.model = 'blind-oracle' AND v.panel = 'offline'"
        ).fetchall())
    assert {r["template"] for r in table} == {q for q, n in volumes.items() if n >= 2}
    options = answer_options(2)
    for r in table:
        q = r["template"]
        assert r["asked"] == asked[q]
        assert r["commonest_answer_share"] == pytest.approx(max(answers[q].values()) / asked[q])
        k = options[q]
        shares = [n / asked[q] for n in answers[q].values()]
        assert r["chance"] == pytest.approx(1 / k if k else sum(s * s for s in shares))
        right = sum(bool(v) for key, v in verdicts.items() if key.split("|", 1)[0] == q)
        assert r["blind_oracle"] == pytest.approx(right / asked[q])       # unanswered counts as not correct
    total = blind_ceiling.overall(table)
    assert total["asked"] == sum(r["asked"] for r in table)


def test_the_report_prints_and_exports_the_ceiling(judged):
    db, _ = judged
    with warehouse.reader(db) as con:
        buffer = io.StringIO()
        print_report(con, Console(file=buffer, width=200))
        data = report_data(con)
    text = buffer.getvalue()
    assert "Blind ceiling per question template" in text and "against chance" in text
    exported = data["datasets"]["phantom-v2-small-s20"]["blind_ceiling"]["offline"]
    assert exported and {"template", "asked", "answers", "chance", "blind_oracle"} <= set(exported[0])
    json.dumps(data, default=str)
