"""Terminal report of the accuracy views (what `ctsvqa report` prints)."""

from __future__ import annotations

import duckdb
from rich.console import Console
from rich.table import Table

from tasks.exports import datasets
from warehouse import summaries


def _pct(x: float | None, digits: int = 1) -> str:
    return "—" if x is None else f"{100 * x:.{digits}f}"


def pending_pct(x: float | None, status: str | None, n_pending: int | None) -> str:
    """An accuracy whose judgments are still pending reads as incomplete, never as a final number."""
    if status == "judging":
        return f"{_pct(x)} — not final, {n_pending} judgment(s) pending"
    return _pct(x)


def model_table(con: duckdb.DuckDBPyConnection, dataset: str) -> Table:
    t = Table(title=f"Jury accuracy — dataset {dataset}", title_justify="left")
    for col in ("panel", "model", "answered", "coverage %", "jury", "majority %", "± SE", "strict %",
                "incomplete juries"):
        t.add_column(col, justify="left" if col in ("panel", "model") else "right")
    for panel, m, nq, npred, maj, strict, cov, jury, inc, se, status, pending in con.execute(
        "SELECT panel, model, n_questions, n_predictions, majority_accuracy, strict_accuracy, coverage, jury_size, "
        "n_incomplete_juries, majority_se, status, n_pending_judgments FROM model_accuracy WHERE dataset = ? "
        "ORDER BY panel NULLS LAST, majority_accuracy DESC NULLS LAST, model", [dataset]
    ).fetchall():
        t.add_row(panel or "(unjudged)", m, f"{npred}/{nq}", _pct(cov), str(jury or "—"),
                  pending_pct(maj, status, pending), _pct(se), pending_pct(strict, status, pending), str(inc))
    return t


def leaderboard_table(con: duckdb.DuckDBPyConnection, dataset: str) -> Table | None:
    from tasks import leaderboard

    rows = leaderboard.table_rows(leaderboard.leaderboard(con, dataset))
    if not rows:
        return None
    note = leaderboard.caveat(con, dataset)
    t = Table(title="Your runs among the published ones (majority of each row's jury)" + (f"\n{note}" if note else ""),
              title_justify="left")
    for col in rows[0]:
        t.add_column(col, justify="right" if col in ("rank", "majority %", "answered") else "left")
    for r in rows:
        style = "bold" if r["what"] == "yours" else None
        t.add_row(*(str(v) for v in r.values()), style=style)
    return t


def judge_table(con: duckdb.DuckDBPyConnection, dataset: str) -> Table:
    t = Table(title="Per judge (accuracy over valid verdicts; no verdict = failed, unparsed or dropped)",
              title_justify="left")
    for col in ("model", "judge", "valid", "no verdict", "accuracy %"):
        t.add_column(col, justify="left" if col in ("model", "judge") else "right")
    for m, j, valid, nv, acc in con.execute(
        "SELECT model, judge, n_valid, n_no_verdict, accuracy FROM judge_accuracy WHERE dataset = ? "
        "ORDER BY model, judge", [dataset]
    ).fetchall():
        t.add_row(m, j, str(valid), str(nv), _pct(acc))
    return t


def category_table(con: duckdb.DuckDBPyConnection, dataset: str, panel: str) -> Table:
    rows = con.execute(
        "SELECT category, model, majority_accuracy, n FROM category_accuracy WHERE dataset = ? AND panel = ?",
        [dataset, panel]).fetchall()
    models = sorted({m for _, m, _, _ in rows})
    cells = {(c, m): (a, n) for c, m, a, n in rows}
    t = Table(title=f"By category (majority %, multi-label) — panel {panel}", title_justify="left")
    t.add_column("category")
    for m in models:
        t.add_column(m, justify="right")
    for c in sorted({c for c, _, _, _ in rows}):
        t.add_row(c, *(_pct(cells[(c, m)][0]) if (c, m) in cells else "—" for m in models))
    return t


def agreement_table(con: duckdb.DuckDBPyConnection, dataset: str) -> Table:
    t = Table(title="Judge agreement (questions where both judges gave a verdict)", title_justify="left")
    for col in ("model", "judges", "n", "agreement %", "Cohen's κ"):
        t.add_column(col, justify="left" if col in ("model", "judges") else "right")
    for m, a, b, n, agree, kappa in con.execute(
        "SELECT model, judge_a, judge_b, n, agreement, cohen_kappa FROM judge_agreement WHERE dataset = ? "
        "ORDER BY model, judge_a, judge_b", [dataset]
    ).fetchall():
        t.add_row(m, f"{a} / {b}", str(n), _pct(agree), "—" if kappa is None else f"{kappa:.3f}")
    return t


def blind_ceiling_table(con: duckdb.DuckDBPyConnection, dataset: str, panel: str) -> Table | None:
    from tasks import blind_ceiling

    table = blind_ceiling.rows(con, dataset, panel)
    if not table:
        return None
    total = blind_ceiling.overall(table)
    title = (f"Blind ceiling per question template — {blind_ceiling.ORACLE} (the commonest answer to the same "
             f"question in the other volumes), panel {panel}")
    if total:
        title += (f"\noverall {_pct(total['blind_oracle'])} % against chance {_pct(total['chance'])} % "
                  f"over {total['asked']} questions")
    t = Table(title=title, title_justify="left")
    for col in ("template", "asked", "answers", "chance %", "blind-oracle %", "commonest answer %"):
        t.add_column(col, justify="left" if col == "template" else "right")
    for r in table:
        t.add_row(r["template"], str(r["asked"]), r["answers"], _pct(r["chance"]), _pct(r["blind_oracle"]),
                  _pct(r["commonest_answer_share"]))
    return t


def _p(x) -> str:
    return "—" if x is None or x != x else (f"{x:.1e}" if x < 1e-3 else f"{x:.3f}")


def comparison_table(con: duckdb.DuckDBPyConnection, dataset: str, panel: str) -> Table | None:
    rows = con.execute(
        "SELECT model_a, model_b, diff, p_value, p_holm, p_clustered_holm, common_judges, same_jury, common_diff, "
        "common_p_holm FROM model_comparisons WHERE dataset = ? AND panel = ? ORDER BY model_a, model_b",
        [dataset, panel]).fetchall()
    if not rows:
        return None
    t = Table(title=f"Pairwise comparisons — panel {panel} (difference in majority accuracy, a − b, on the questions "
                    f"both answered; p: exact McNemar, Holm-adjusted over these {len(rows)}; clustered: the paired "
                    f"difference with volumes as clusters). Where the two juries differ, the common-jury columns "
                    f"compare them on the judges both have.", title_justify="left")
    for col in ("a", "b", "a − b pts", "p", "p Holm", "p clustered, Holm", "common jury", "a − b pts (common)",
                "p Holm (common)"):
        t.add_column(col, justify="left" if col in ("a", "b", "common jury") else "right")
    for a, b, diff, p, ph, pch, judges, same, cdiff, cph in rows:
        common = "same jury" if same else ("none" if not judges else "+".join(judges)) if same is not None else "—"
        t.add_row(a, b, "—" if diff is None else f"{100 * diff:+.2f}", _p(p), _p(ph), _p(pch), common,
                  "—" if same or cdiff is None else f"{100 * cdiff:+.2f}", "—" if same else _p(cph))
    return t


def shared_note(con: duckdb.DuckDBPyConnection, dataset: str) -> str | None:
    """One line saying which verdicts were shared between identical items, if any were."""
    rows = con.execute("SELECT judge, sum(n_shared), sum(n_verdicts), count(DISTINCT run_id) FROM shared_verdicts "
                       "WHERE dataset = ? GROUP BY judge HAVING sum(n_shared) > 0 ORDER BY judge", [dataset]).fetchall()
    if not rows:
        return None
    parts = ", ".join(f"{judge} {shared:,} of {total:,} over {runs} run(s)" for judge, shared, total, runs in rows)
    return (f"note: verdicts shared between identical question/reference/prediction items (judged once, reused): "
            f"{parts}; `share_verdicts: false` in a judges file judges each item on its own")


def held_out_note(con: duckdb.DuckDBPyConnection, dataset: str) -> str | None:
    """Which runs a learned judge scored with a head that never saw their verdicts (leave one out)."""
    rows = con.execute(
        "SELECT jd.name, list(DISTINCT r.name ORDER BY r.name) FROM judgments AS j JOIN runs AS r USING (run_id) "
        "JOIN judges AS jd USING (judge_id) WHERE r.dataset_id = ? AND jd.provider = 'learned' "
        "AND j.reason LIKE '%(head trained without %' GROUP BY jd.name ORDER BY jd.name", [dataset]).fetchall()
    if not rows:
        return None
    return "note: " + "; ".join(f"judge {judge} scored {', '.join(runs)} with heads trained without each one's "
                                f"verdicts (leave one model out): their accuracy is held out" for judge, runs in rows)


def panels(con: duckdb.DuckDBPyConnection, dataset: str) -> list[str]:
    """The jury panels with verdicts on `dataset`, in name order."""
    return [p for (p,) in con.execute("SELECT DISTINCT panel FROM jury_verdicts WHERE dataset = ? ORDER BY panel",
                                      [dataset]).fetchall()]


def incomplete_runs(con: duckdb.DuckDBPyConnection, dataset: str) -> list[str]:
    """One warning line per run and panel whose numbers are not final yet (run_status 'judging')."""
    return [f"warning: {model} (panel {panel}) is still being judged: {n} judgments pending from "
            f"{', '.join(judges)}; its accuracy is not final"
            for model, panel, n, judges in con.execute(
                "SELECT model, panel, n_pending_judgments, judges_pending FROM run_status "
                "WHERE dataset = ? AND status = 'judging' ORDER BY model, panel", [dataset]).fetchall()]


def report_datasets(con: duckdb.DuckDBPyConnection, dataset: str | None, where: str = "the warehouse") -> list[str]:
    """The datasets a report covers: `dataset`, else every one; an empty warehouse or an unknown
    dataset is an error saying so."""
    known = datasets(con)
    if not known:
        raise ValueError(f"{where} is empty: no dataset, so nothing to report; import one first "
                         "(ctsvqa import-upstream PATH, or ctsvqa benchmark)")
    if dataset is not None and dataset not in known:
        raise ValueError(f"unknown dataset {dataset!r}; known: {', '.join(known)}")
    return [dataset] if dataset else known


def print_report(con: duckdb.DuckDBPyConnection, console: Console | None = None, dataset: str | None = None) -> None:
    console = console or Console(width=None if Console().is_terminal else 120)
    if summaries.reading_live(con):
        console.print("note: the summary tables are older than the data (a writer has not refreshed them yet); "
                      "these numbers are computed live from the definitions. `ctsvqa db refresh` makes reads fast again.",
                      style="yellow")
    for ds in report_datasets(con, dataset):
        for line in incomplete_runs(con, ds):
            console.print(line, style="bold yellow")
        for note in (shared_note(con, ds), held_out_note(con, ds)):
            if note:
                console.print(note)
        tables = [model_table(con, ds)]
        if board := leaderboard_table(con, ds):
            tables.append(board)
        tables.append(judge_table(con, ds))
        judged = panels(con, ds)
        tables += [category_table(con, ds, p) for p in judged]
        tables.append(agreement_table(con, ds))
        tables += [t for p in judged if (t := comparison_table(con, ds, p))]
        tables += [t for p in judged if (t := blind_ceiling_table(con, ds, p))]
        for table in tables:
            console.print(table)
            console.print()


REPORT_VIEWS = {   # what `report --json` gives per dataset: the views the terminal tables show
    "model_accuracy": "SELECT * EXCLUDE (dataset) FROM model_accuracy WHERE dataset = ? "
                      "ORDER BY panel NULLS LAST, majority_accuracy DESC NULLS LAST, model",
    "judge_accuracy": "SELECT * EXCLUDE (dataset) FROM judge_accuracy WHERE dataset = ? ORDER BY model, judge",
    "category_accuracy": "SELECT * EXCLUDE (dataset) FROM category_accuracy WHERE dataset = ? "
                         "ORDER BY panel, category, model",
    "judge_agreement": "SELECT * EXCLUDE (dataset) FROM judge_agreement WHERE dataset = ? "
                       "ORDER BY model, judge_a, judge_b",
    "model_comparisons": "SELECT * EXCLUDE (dataset) FROM model_comparisons WHERE dataset = ? "
                         "ORDER BY panel, model_a, model_b",
}


def report_data(con: duckdb.DuckDBPyConnection, dataset: str | None = None) -> dict:
    """{dataset: {view: [row, ...]}} plus the warnings the terminal report prints."""
    out = {}
    for ds in report_datasets(con, dataset):
        out[ds] = {}
        for name, sql in REPORT_VIEWS.items():
            rows = con.execute(sql, [ds]).fetchall()
            out[ds][name] = [dict(zip([d[0] for d in con.description], row)) for row in rows]
        from tasks import blind_ceiling

        out[ds]["blind_ceiling"] = {p: blind_ceiling.rows(con, ds, p) for p in panels(con, ds)}
        out[ds]["shared_verdicts"] = [dict(zip(("model", "judge", "n_verdicts", "n_shared"), r)) for r in con.execute(
            "SELECT model, judge, n_verdicts, n_shared FROM shared_verdicts WHERE dataset = ? ORDER BY model, judge",
            [ds]).fetchall()]
        out[ds]["held_out"] = held_out_note(con, ds)
        out[ds]["warnings"] = incomplete_runs(con, ds)
        out[ds]["summaries_live"] = summaries.reading_live(con)
    return {"datasets": out}
