"""The import is cached on its files' content: unchanged files skip parse and load; any change re-runs."""

from __future__ import annotations

import json

import duckdb

from tasks import upstream_import as ui
from tests.conftest import table_digest


def counting_steps(calls: list[str]) -> ui.Steps:
    def count(name, fn):
        def call(*args):
            calls.append(name)
            return fn(*args)
        return call
    return ui.Steps(count("dataset", ui.parse_dataset), count("predictions", ui.parse_predictions),
                    count("judgments", ui.parse_judgments), count("load", ui.load))


def test_unchanged_files_skip_parse_and_load(mini_copy, db):
    calls: list[str] = []
    first = ui.import_upstream(mini_copy, db, steps=counting_steps(calls))
    assert not first.unchanged and "load" in calls and "dataset" in calls
    before = table_digest(db)
    calls.clear()
    again = ui.import_upstream(mini_copy, db, steps=counting_steps(calls))
    assert calls == [] and again.unchanged
    assert (again.n_questions, again.predictions, again.judgments) == (
        first.n_questions, first.predictions, first.judgments)
    assert table_digest(db) == before


def n_false(db) -> int:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute("SELECT count(*) FROM stg_judgments WHERE model = 'm3d' AND judge = 'gpt' "
                           "AND NOT verdict").fetchone()[0]


def test_a_changed_file_reruns_and_its_change_lands(mini_copy, db):
    ui.import_upstream(mini_copy, db)
    before = n_false(db)
    verdicts = mini_copy / "benchmarking/reports/llm_eval/m3d_gpt_eval.json"
    items = json.loads(verdicts.read_text())
    items[0]["is_correct"] = False
    verdicts.write_text(json.dumps(items))
    calls: list[str] = []
    summary = ui.import_upstream(mini_copy, db, steps=counting_steps(calls))
    assert not summary.unchanged and "load" in calls
    assert n_false(db) == before + 1


def test_another_dataset_id_or_a_new_warehouse_is_not_a_cache_hit(mini_copy, db, tmp_path):
    ui.import_upstream(mini_copy, db)
    assert not ui.import_upstream(mini_copy, db, dataset_id="other").unchanged
    assert not ui.import_upstream(mini_copy, tmp_path / "fresh.duckdb").unchanged


def test_cli_import_of_unchanged_files_runs_no_flow(tmp_path):
    """Nothing to do costs no Prefect start-up: the CLI checks the fingerprint before any flow."""
    import subprocess
    import sys

    from tests.conftest import MINI, REPO, cli_env

    db = tmp_path / "wh.duckdb"
    ui.import_upstream(MINI, db)
    env = cli_env(PREFECT_API_URL="http://127.0.0.1:9/api")      # nothing listens: a flow run would fail
    done = subprocess.run([sys.executable, "-m", "flows.cli", "import-upstream", str(MINI), "--db", str(db)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "unchanged since the last import" in done.stdout and "dataset ct-spatialvqa: 3 volumes" in done.stdout


def test_cli_preprocess_with_every_input_built_runs_no_flow(tmp_path):
    import subprocess
    import sys

    from adapters.datasets.phantom import generate
    from tasks.inference import build_inputs
    from tests.conftest import REPO, cli_env

    generate(tmp_path / "ph", 2, 3, "small")
    db = tmp_path / "wh.duckdb"
    summary = ui.import_upstream(tmp_path / "ph", db)
    con = duckdb.connect(str(db), read_only=True)
    volumes = [v for (v,) in con.execute("SELECT volume FROM volumes").fetchall()]
    con.close()
    assert build_inputs(db, summary.dataset_id, "vila-m3", volumes) == 2
    env = cli_env(PREFECT_API_URL="http://127.0.0.1:9/api")      # nothing listens: a flow run would fail
    done = subprocess.run([sys.executable, "-m", "flows.cli", "preprocess", "--recipes", "vila-m3", "--db", str(db)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("0 volume(s) processed; 2 model inputs built in total")
