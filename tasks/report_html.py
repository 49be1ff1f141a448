"""The shareable report: altair charts of the metric views in one self-contained HTML file (the Vega
libraries inlined, so it opens with no network), plus a PNG and an SVG of every chart.

Everything shown comes from the views; Python only reshapes it for plotting. Model outputs are untrusted
text: tables escape them, and chart specs are embedded as JSON data blocks with every `<` escaped, so a
prediction containing `</script><script>…` renders as text and never runs.
"""

from __future__ import annotations

import html
import json
import secrets
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import altair as alt
import duckdb
import pandas as pd

import warehouse
from tasks.report import report_datasets
from warehouse.connection import query_text

PANEL_PREFERENCE = ("paper", "upstream", "offline-learned", "offline")
MAX_HEATMAP_QUESTIONS = 1500
N_EXAMPLES = 6


@dataclass
class Report:
    html: Path
    images: list[Path] = field(default_factory=list)
    dataset: str = ""
    panel: str | None = None


def _query(con: duckdb.DuckDBPyConnection, name: str, **params) -> pd.DataFrame:
    return con.execute(query_text(f"{name}.sql"), params).df()


def choose_panel(con: duckdb.DuckDBPyConnection, dataset: str, panel: str | None) -> str | None:
    panels = [p for (p,) in con.execute(
        "SELECT DISTINCT panel FROM model_accuracy WHERE dataset = ? AND panel IS NOT NULL ORDER BY panel",
        [dataset]).fetchall()]
    if panel is not None:
        if panel not in panels:
            raise ValueError(f"panel {panel!r} has no verdicts in dataset {dataset!r}; panels: "
                             f"{', '.join(panels) or 'none (judge the runs first)'}")
        return panel
    for preferred in PANEL_PREFERENCE:
        if preferred in panels:
            return preferred
    return panels[0] if panels else None


# --- charts ---------------------------------------------------------------------------------------

PALETTE = ("#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#eeca3b", "#b279a2", "#ff9da6", "#9d755d",
           "#bab0ac", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf")       # vega's tableau10 then category10: one colour per model in every chart


def model_colours(models: list[str]) -> alt.Scale:
    """The same colour for a model in every chart of the report (the questions and references grey)."""
    models = sorted(models)
    return alt.Scale(domain=["questions", "references", *models],
                     range=["#9e9e9e", "#616161", *(PALETTE[i % len(PALETTE)] for i in range(len(models)))])


def accuracy_chart(acc: pd.DataFrame, colours: alt.Scale) -> alt.Chart:
    order = acc.sort_values("majority_accuracy", ascending=False)["model"].tolist()
    base = alt.Chart(acc).encode(y=alt.Y("model:N", sort=order, title=None))
    bars = base.mark_bar().encode(color=alt.Color("model:N", scale=colours, legend=None),
        x=alt.X("majority_accuracy:Q", title="majority accuracy (95% CI)", scale=alt.Scale(domain=[0, 1]),
                axis=alt.Axis(format="%")),
        tooltip=["model", alt.Tooltip("majority_accuracy:Q", format=".1%"), alt.Tooltip("ci_low:Q", format=".1%"),
                 alt.Tooltip("ci_high:Q", format=".1%"), "ci_method", "n_predictions", "n_questions"])
    whiskers = base.mark_rule(color="black").encode(x="ci_low:Q", x2="ci_high:Q")
    return (bars + whiskers).properties(title="Accuracy per model", width=520, height=28 * max(len(acc), 2))


def category_chart(cats: pd.DataFrame, colours: alt.Scale) -> alt.Chart:
    return alt.Chart(cats).mark_bar().encode(
        x=alt.X("model:N", title=None, axis=alt.Axis(labelAngle=-40)),
        y=alt.Y("majority_accuracy:Q", title="majority accuracy", axis=alt.Axis(format="%"),
                scale=alt.Scale(domain=[0, 1])),
        color=alt.Color("model:N", scale=colours, legend=None),
        tooltip=["category", "model", alt.Tooltip("majority_accuracy:Q", format=".1%"), "n"],
    ).properties(width=200, height=160).facet(facet=alt.Facet("category:N", title=None), columns=3).properties(
        title="Accuracy by spatial category (a question counts in each of its categories)")


def heatmap_chart(cells: pd.DataFrame, model_order: list[str], n_questions: int) -> alt.Chart:
    difficulty = cells.groupby("qid")["jury_mean"].mean().sort_values(ascending=False)
    q_order = difficulty.index.tolist()
    sampled = f" (a fixed sample of {len(q_order)} of {n_questions})" if len(q_order) < n_questions else ""
    return alt.Chart(cells).mark_rect().encode(
        x=alt.X("model:N", sort=model_order, title=None, axis=alt.Axis(labelAngle=-40)),
        y=alt.Y("qid:N", sort=q_order, title=f"questions, easiest first{sampled}",
                axis=alt.Axis(labels=False, ticks=False)),
        color=alt.Color("jury_mean:Q", title="jury mean", scale=alt.Scale(scheme="redyellowgreen", domain=[0, 1])),
        tooltip=["qid", "model", alt.Tooltip("jury_mean:Q", format=".2f")],
    ).properties(title="Correctness per question and model", width=40 * max(len(model_order), 3), height=420)


def lengths_chart(lengths: pd.DataFrame, colours: alt.Scale) -> alt.Chart:
    """One box per source, as upstream's answer-length plot: quartiles, 5th-95th percentile whiskers,
    the median; whole-word ticks."""
    order = lengths["source"].tolist()              # questions, references, then the runs by name
    words = alt.Axis(tickMinStep=1, format="d")
    base = alt.Chart(lengths).encode(x=alt.X("source:N", sort=order, title=None, axis=alt.Axis(labelAngle=-40)))
    tip = ["source", "n", "lowest", "p05", "q1", "median", "q3", "p95", "highest", alt.Tooltip("mean:Q", format=".1f")]
    whiskers = base.mark_rule().encode(y=alt.Y("p05:Q", title="words per text", axis=words), y2="p95:Q",
                                       tooltip=tip)
    boxes = base.mark_bar(size=22).encode(y="q1:Q", y2="q3:Q", color=alt.Color("source:N", scale=colours,
                                                                               legend=None), tooltip=tip)
    medians = base.mark_tick(color="#222222", size=22, thickness=2).encode(y="median:Q", tooltip=tip)
    return (whiskers + boxes + medians).properties(
        title="Length of questions, reference answers and each model's answers (box: quartiles; whiskers: "
              "5th-95th percentile)", width=max(60 * len(order), 360), height=280)


def agreement_chart(agreement: pd.DataFrame) -> alt.Chart:
    agreement = agreement.assign(pair=agreement["judge_a"] + " / " + agreement["judge_b"])
    base = alt.Chart(agreement).encode(x=alt.X("pair:N", title=None), y=alt.Y("model:N", title=None))
    cells = base.mark_rect().encode(
        color=alt.Color("cohen_kappa:Q", title="Cohen's κ", scale=alt.Scale(scheme="blues", domain=[0, 1])),
        tooltip=["model", "pair", "n", alt.Tooltip("agreement:Q", format=".1%"),
                 alt.Tooltip("cohen_kappa:Q", format=".3f")])
    labels = base.mark_text(fontSize=11).encode(text=alt.Text("cohen_kappa:Q", format=".2f"))
    return (cells + labels).properties(title="Agreement between judges", width=120 * agreement["pair"].nunique(),
                                       height=28 * agreement["model"].nunique())


def reliance_chart(pairs: pd.DataFrame) -> alt.Chart:
    return alt.Chart(pairs).mark_bar().encode(
        x=alt.X("condition:N", title=None, sort=["own volume", "another patient's volume"]),
        y=alt.Y("majority_accuracy:Q", title="majority accuracy", axis=alt.Axis(format="%"),
                scale=alt.Scale(domain=[0, 1])),
        color=alt.Color("condition:N", legend=None),
        column=alt.Column("model:N", title=None),
        tooltip=["model", "condition", alt.Tooltip("majority_accuracy:Q", format=".1%")],
    ).properties(title="Image reliance: the same model given another patient's volume", width=110, height=200)


def reliance_pairs(acc: pd.DataFrame) -> pd.DataFrame:
    """Runs X and X-shuffled (the volume-shuffle ablation, named so by `ctsvqa infer`) side by side."""
    by_name = acc.set_index("model")["majority_accuracy"]
    rows = []
    for name in by_name.index:
        if name.endswith("-shuffled") and name[: -len("-shuffled")] in by_name.index:
            base = name[: -len("-shuffled")]
            rows += [{"model": base, "condition": "own volume", "majority_accuracy": by_name[base]},
                     {"model": base, "condition": "another patient's volume", "majority_accuracy": by_name[name]}]
    return pd.DataFrame(rows)


# --- page ---------------------------------------------------------------------------------------------

def _json_block(spec: dict) -> str:
    """JSON safe inside a <script> element: no '<' survives, so no text can close the element."""
    return json.dumps(spec).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _acc(x) -> str:
    return "—" if x is None or x != x else f"{x:.1%}"


def _table(df: pd.DataFrame, formats: dict[str, str] | None = None) -> str:
    formats = formats or {}
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    rows = []
    for record in df.itertuples(index=False):
        cells = []
        for col, value in zip(df.columns, record):
            if value is None or (isinstance(value, float) and value != value):
                text = "—"
            elif col in formats:
                text = formats[col].format(value)
            else:
                text = str(value)
            cells.append(f"<td>{html.escape(text)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; script-src 'nonce-{nonce}' 'unsafe-eval'; style-src 'unsafe-inline'; img-src data:">
<title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1200px; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 13px; }}
th, td {{ border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; }}
th {{ background: #f3f3f3; }}
.chart {{ margin: 1em 0 2em; }}
.note {{ color: #666; font-size: 13px; }}
</style>
<script nonce="{nonce}">{bundle}</script>
</head><body>
<h1>{title}</h1>
<p class="note">{note}</p>
{body}
<script nonce="{nonce}">
document.querySelectorAll("script[type='application/json'][data-chart]").forEach(function (el) {{
  vegaEmbed("#" + el.dataset.chart, JSON.parse(el.textContent), {{actions: false, renderer: "svg"}})
    .then(function () {{ document.getElementById(el.dataset.chart).setAttribute("data-rendered", "yes"); }})
    .catch(function (err) {{ document.getElementById(el.dataset.chart).textContent = "chart failed: " + err; }});
}});
</script>
</body></html>
"""


def build_charts(con: duckdb.DuckDBPyConnection, dataset: str, panel: str | None) -> tuple[dict, dict]:
    """Charts (name -> altair chart) and tables (title -> html) of one dataset under one panel."""
    charts: dict[str, alt.TopLevelMixin] = {}
    tables: dict[str, str] = {}
    lengths = _query(con, "report_lengths", dataset=dataset)
    colours = model_colours([m for (m,) in con.execute("SELECT name FROM runs WHERE dataset_id = ?",
                                                       [dataset]).fetchall()])
    if panel is not None:
        acc = _query(con, "report_accuracy", dataset=dataset, panel=panel)
        acc = acc[acc["majority_accuracy"].notna()]
        if len(acc):
            charts["accuracy"] = accuracy_chart(acc, colours)
            shown = acc.assign(majority=acc["majority_accuracy"], ci=list(zip(acc["ci_low"], acc["ci_high"])))
            final = shown["status"] != "judging"        # a run still being judged reads as incomplete
            tables["Headline"] = _table(
                shown[["model", "n_predictions", "n_questions", "coverage", "jury_size", "majority", "ci",
                       "ci_method", "strict_accuracy", "n_failed_predictions"]]
                .assign(ci=[f"{lo:.1%} – {hi:.1%}" for lo, hi in shown["ci"]],
                        majority=[_acc(m) if ok else f"{_acc(m)} — not final, {n} judgment(s) pending"
                                  for m, ok, n in zip(shown["majority"], final, shown["n_pending_judgments"])],
                        strict_accuracy=[_acc(m) if ok else f"{_acc(m)} — not final"
                                         for m, ok in zip(shown["strict_accuracy"], final)]),
                {"coverage": "{:.1%}"})
            from tasks import leaderboard

            if board := leaderboard.table_rows(leaderboard.leaderboard(con, dataset)):
                note = leaderboard.caveat(con, dataset)
                tables["Your runs among the published ones" + (f" ({note})" if note else "")] = _table(
                    pd.DataFrame(board))
            cats = con.execute("SELECT category, model, majority_accuracy, n FROM category_accuracy "
                               "WHERE dataset = ? AND panel = ?", [dataset, panel]).df()
            if len(cats):
                charts["categories"] = category_chart(cats, colours)
            n_questions = con.execute("SELECT count(*) FROM questions WHERE dataset_id = ?", [dataset]).fetchone()[0]
            cells = _query(con, "report_heatmap", dataset=dataset, panel=panel, max_questions=MAX_HEATMAP_QUESTIONS)
            if len(cells):
                charts["heatmap"] = heatmap_chart(cells, acc["model"].tolist(), n_questions)
            pairs = reliance_pairs(acc)
            if len(pairs):
                charts["image_reliance"] = reliance_chart(pairs)
        comparisons = con.execute(
            "SELECT model_a, model_b, diff, p_value, p_holm, p_clustered, p_clustered_holm, common_judges, same_jury, "
            "common_diff, common_p_value, common_p_holm FROM model_comparisons WHERE dataset = ? AND panel = ? "
            "ORDER BY model_a, model_b", [dataset, panel]).df()
        if len(comparisons):
            comparisons["common_judges"] = ["+".join(j) if j is not None else None for j in comparisons["common_judges"]]
            tables["Pairwise comparisons (a − b on shared questions; McNemar, Holm over the family, volume-clustered; "
                   "common_*: on the judges both juries have)"] = _table(
                comparisons, {"diff": "{:+.2%}", "common_diff": "{:+.2%}", "p_value": "{:.3g}", "p_holm": "{:.3g}",
                              "p_clustered": "{:.3g}", "p_clustered_holm": "{:.3g}", "common_p_value": "{:.3g}",
                              "common_p_holm": "{:.3g}"})
        from tasks import blind_ceiling

        if ceiling := blind_ceiling.rows(con, dataset, panel):
            total = blind_ceiling.overall(ceiling)
            title = f"Blind ceiling per question template ({blind_ceiling.ORACLE}: the commonest answer in the other volumes)"
            if total:
                title += f": {total['blind_oracle']:.1%} overall against chance {total['chance']:.1%}"
            tables[title] = _table(pd.DataFrame(ceiling), {"chance": "{:.1%}", "blind_oracle": "{:.1%}",
                                                           "commonest_answer_share": "{:.1%}"})
        agreement = con.execute("SELECT a.* FROM judge_agreement AS a JOIN run_juries AS j ON j.run_id = a.run_id "
                                "AND j.judge = a.judge_a WHERE a.dataset = ? AND j.panel = ?",
                                [dataset, panel]).df()
        if len(agreement):
            charts["judge_agreement"] = agreement_chart(agreement)
    if len(lengths):
        charts["answer_lengths"] = lengths_chart(lengths, colours)
    text = con.execute("SELECT model, count, bleu, rouge1_f, rouge2_f, rougeL_f, meteor, sbert_cosine, exact_match "
                       "FROM text_metrics WHERE dataset = ? ORDER BY model", [dataset]).df()
    if len(text):
        tables["Text metrics (ctsvqa score)"] = _table(text, {c: "{:.4f}" for c in text.columns[2:]})
    examples = _query(con, "report_examples", dataset=dataset, n=N_EXAMPLES)
    if len(examples):
        tables["Example answers (model outputs shown as text)"] = _table(examples)
    return charts, tables


def write_report(db, out: str | Path, dataset: str | None = None, panel: str | None = None,
                 images: bool = True) -> Report:
    import vl_convert as vlc

    out = Path(out)
    with warehouse.reader(db) as con:
        known = report_datasets(con, dataset, where=f"the warehouse {warehouse.resolve_db(db)}")
        if len(known) != 1:
            raise ValueError(f"the warehouse has {len(known)} datasets ({', '.join(known)}); pass --dataset")
        dataset = known[0]
        panel = choose_panel(con, dataset, panel)
        charts, tables = build_charts(con, dataset, panel)
        from tasks.report import held_out_note, shared_note

        shared = " ".join(n for n in (shared_note(con, dataset), held_out_note(con, dataset)) if n)
    specs = {name: chart.to_dict() for name, chart in charts.items()}
    report = Report(html=out / "report.html", dataset=dataset, panel=panel)
    # the headline and the leaderboard, then the charts, then the long tables (text metrics, examples)
    lead = [t for t in tables if t == "Headline" or t.startswith("Your runs")]
    body = [f"<h2>{html.escape(title)}</h2>{tables[title]}" for title in lead]
    for name, spec in specs.items():
        body.append(f'<div class="chart" id="chart-{name}"></div>'
                    f'<script type="application/json" data-chart="chart-{name}">{_json_block(spec)}</script>')
    body += [f"<h2>{html.escape(title)}</h2>{table}" for title, table in tables.items() if title not in lead]
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    note = (f"dataset {dataset}; jury panel {panel or 'none (no verdicts yet)'}; made {stamp} from "
            f"{warehouse.resolve_db(db)}")
    if shared:
        note += ". " + shared.replace("note: ", "")
    # Only our two scripts carry the nonce: even if some text escaped into the page as a <script>, the
    # browser would refuse to run it.
    page = PAGE.format(nonce=secrets.token_urlsafe(16), title=html.escape(f"ctsvqa report — {dataset}"), note=html.escape(note),
                       body="\n".join(body), bundle=vlc.javascript_bundle().replace("</script", "<\\/script"))
    _write_all(out, report, specs, page, images, vlc)
    return report


def _write_all(out: Path, report: Report, specs: dict, page: str, images: bool, vlc) -> None:
    """The chart images, then the page (through a temporary file, renamed into place). A write that
    fails (a full disk) removes what this call wrote, and the folder if it made it, and names the
    file it could not write."""
    made = not out.exists()
    written: list[Path] = []
    tmp = report.html.with_suffix(".html.tmp")
    current = out
    try:
        out.mkdir(parents=True, exist_ok=True)
        if images:
            for name, spec in specs.items():
                for suffix, render in (("svg", vlc.vegalite_to_svg), ("png", vlc.vegalite_to_png)):
                    current = out / f"{name}.{suffix}"
                    data = render(spec)
                    written.append(current)
                    current.write_bytes(data if isinstance(data, bytes) else data.encode())
        current = tmp
        written.append(tmp)
        tmp.write_text(page, encoding="utf-8")
        current = report.html
        tmp.replace(report.html)
    except OSError as exc:
        for path in written:
            path.unlink(missing_ok=True)
        if made:
            shutil.rmtree(out, ignore_errors=True)
        raise OSError(exc.errno, f"could not write the report ({exc.strerror}); nothing of it was left behind",
                      str(current)) from exc
    report.images.extend(p for p in written if p != tmp)
