"""Idempotent loaders: each replaces exactly the slice of the warehouse it owns (a dataset, a run's
predictions, one source's judgments of a run) with what it is given. They never open or commit a
transaction themselves; the caller wraps a whole load in one, so a failure leaves nothing behind."""

from __future__ import annotations

import json
from typing import Any

import duckdb
import pyarrow as pa


def _stage(con: duckdb.DuckDBPyConnection, name: str, columns: dict[str, list], schema: pa.Schema) -> None:
    con.register(name, pa.table(columns, schema=schema))


def _unstage(con: duckdb.DuckDBPyConnection, *names: str) -> None:
    for name in names:
        con.unregister(name)


QUESTIONS_SCHEMA = pa.schema([("qid", pa.string()), ("volume", pa.string()), ("idx", pa.int32()),
                              ("question", pa.string()), ("answer", pa.string())])
VOLUMES_SCHEMA = pa.schema([("volume", pa.string()), ("position", pa.int32())])
CATEGORIES_SCHEMA = pa.schema([("qid", pa.string()), ("category", pa.string())])
PREDICTIONS_SCHEMA = pa.schema([("qid", pa.string()), ("text", pa.string()), ("status", pa.string()),
                                ("reason", pa.string()), ("provenance", pa.string())])
JUDGMENTS_SCHEMA = pa.schema([("judge_id", pa.string()), ("qid", pa.string()), ("verdict", pa.bool_()), ("status", pa.string()),
                              ("reason", pa.string()), ("raw_response", pa.string())])


def replace_dataset(con: duckdb.DuckDBPyConnection, *, dataset_id: str, source: str, source_path: str,
                    synthetic: bool, description: str | None, volumes: list[str],
                    questions: dict[str, list], categories: dict[str, list] | None) -> None:
    """questions: columns qid, volume, idx, question, answer. categories: qid, category, or None to
    keep the categories already stored (a re-import without the categories file keeps them)."""
    con.execute(
        "INSERT INTO datasets (dataset_id, source, source_path, synthetic, description) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (dataset_id) DO UPDATE SET source = excluded.source, source_path = excluded.source_path, "
        "synthetic = excluded.synthetic, description = excluded.description, loaded_at = now()",
        [dataset_id, source, source_path, synthetic, description],
    )
    _stage(con, "stg_volumes", {"volume": volumes, "position": list(range(len(volumes)))}, VOLUMES_SCHEMA)
    _stage(con, "stg_questions", questions, QUESTIONS_SCHEMA)
    con.execute("DELETE FROM volumes WHERE dataset_id = ?", [dataset_id])
    con.execute("INSERT INTO volumes SELECT ?, volume, position FROM stg_volumes", [dataset_id])
    con.execute("DELETE FROM questions WHERE dataset_id = ?", [dataset_id])
    con.execute("INSERT INTO questions SELECT ?, qid, volume, idx, question, answer FROM stg_questions", [dataset_id])
    _unstage(con, "stg_volumes", "stg_questions")
    if categories is not None:
        _stage(con, "stg_categories", categories, CATEGORIES_SCHEMA)
        con.execute("DELETE FROM question_categories WHERE dataset_id = ?", [dataset_id])
        con.execute("INSERT INTO question_categories SELECT ?, qid, category FROM stg_categories", [dataset_id])
        _unstage(con, "stg_categories")


def upsert_model(con: duckdb.DuckDBPyConnection, model_id: str, family: str | None = None,
                 checkpoint: str | None = None, description: str | None = None) -> None:
    con.execute(
        "INSERT INTO models VALUES (?, ?, ?, ?) ON CONFLICT (model_id) DO UPDATE SET "
        "family = coalesce(excluded.family, family), checkpoint = coalesce(excluded.checkpoint, checkpoint), "
        "description = coalesce(excluded.description, description)",
        [model_id, family, checkpoint, description],
    )


def upsert_run(con: duckdb.DuckDBPyConnection, *, run_id: str, dataset_id: str, name: str, model_id: str,
               source: str, config: dict[str, Any]) -> None:
    con.execute(
        "INSERT INTO runs (run_id, dataset_id, name, model_id, source, config) VALUES (?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (run_id) DO UPDATE SET config = excluded.config",
        [run_id, dataset_id, name, model_id, source, json.dumps(config)],
    )


def replace_predictions(con: duckdb.DuckDBPyConnection, run_id: str, rows: dict[str, list]) -> int:
    """Make the run's predictions exactly `rows`. Unchanged rows are left alone (they keep their
    created_at); judgments of a prediction that disappears or whose text changes are deleted with
    it, since they judged something else. Returns the number of judgments deleted."""
    _stage(con, "stg_predictions_in", rows, PREDICTIONS_SCHEMA)
    params = {"run": run_id}
    stale = con.execute(
        """
        DELETE FROM judgments AS j
        WHERE j.run_id = $run AND j.qid IN (
            SELECT p.qid FROM predictions AS p LEFT JOIN stg_predictions_in AS s USING (qid)
            WHERE p.run_id = $run AND (s.qid IS NULL OR s.text IS DISTINCT FROM p.text))
        """, params).fetchone()[0]
    con.execute(
        """
        DELETE FROM predictions AS p
        WHERE p.run_id = $run AND NOT EXISTS (
            SELECT 1 FROM stg_predictions_in AS s
            WHERE s.qid = p.qid AND s.text IS NOT DISTINCT FROM p.text AND s.status = p.status
              AND s.reason IS NOT DISTINCT FROM p.reason AND s.provenance IS NOT DISTINCT FROM p.provenance::VARCHAR)
        """, params)
    con.execute(
        """
        INSERT INTO predictions (run_id, qid, text, status, reason, provenance)
        SELECT $run, s.qid, s.text, s.status, s.reason, s.provenance
        FROM stg_predictions_in AS s
        WHERE NOT EXISTS (SELECT 1 FROM predictions AS p WHERE p.run_id = $run AND p.qid = s.qid)
        """, params)
    _unstage(con, "stg_predictions_in")
    return stale


def upsert_judge(con: duckdb.DuckDBPyConnection, *, judge_id: str, name: str, provider: str, model: str,
                 prompt_version: str, settings: dict[str, Any] | None = None, notes: str | None = None) -> None:
    con.execute(
        "INSERT INTO judges VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (judge_id) DO UPDATE SET "
        "settings = excluded.settings, notes = excluded.notes",
        [judge_id, name, provider, model, prompt_version, json.dumps(settings or {}), notes],
    )


def add_panel_member(con: duckdb.DuckDBPyConnection, panel: str, judge_id: str,
                     description: str | None = None) -> None:
    con.execute("INSERT INTO panels VALUES (?, ?) ON CONFLICT (panel) DO UPDATE SET "
                "description = coalesce(excluded.description, description)", [panel, description])
    con.execute("INSERT INTO panel_members VALUES (?, ?) ON CONFLICT DO NOTHING", [panel, judge_id])


def replace_judgments_from_source(con: duckdb.DuckDBPyConnection, *, run_id: str, source: str,
                                  rows: dict[str, list]) -> None:
    """Make the run's judgments that came from `source` exactly `rows` (columns judge_id, qid,
    verdict, status, reason, raw_response). Unchanged rows are left alone; judgments from other
    sources (other judges, other flows) are never touched."""
    _stage(con, "stg_judgments_in", rows, JUDGMENTS_SCHEMA)
    params = {"run": run_id, "source": source}
    con.execute(
        """
        DELETE FROM judgments AS j
        WHERE j.run_id = $run AND j.source = $source AND NOT EXISTS (
            SELECT 1 FROM stg_judgments_in AS s
            WHERE s.judge_id = j.judge_id AND s.qid = j.qid AND s.verdict IS NOT DISTINCT FROM j.verdict
              AND s.status = j.status AND s.reason IS NOT DISTINCT FROM j.reason
              AND s.raw_response IS NOT DISTINCT FROM j.raw_response)
        """, params)
    con.execute(
        """
        INSERT INTO judgments (run_id, qid, judge_id, verdict, status, reason, raw_response, source)
        SELECT $run, s.qid, s.judge_id, s.verdict, s.status, s.reason, s.raw_response, $source
        FROM stg_judgments_in AS s
        WHERE NOT EXISTS (SELECT 1 FROM judgments AS j
                          WHERE j.run_id = $run AND j.qid = s.qid AND j.judge_id = s.judge_id)
        """, params)
    _unstage(con, "stg_judgments_in")
