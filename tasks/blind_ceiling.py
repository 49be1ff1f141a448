"""The blind ceiling per question template, from the `template_accuracy` view: how much of a data set
a model that reads only the question text can get right, beside chance.

Chance for a template is 1/k, a uniform guess among the k answers it can have: k from the phantom
generator's design (phantom.answer_options, for the generator version the data set's name says) for its
templates, else the number of distinct reference
answers in the data set; for a measurement ("About N mm.") it is the chance that a guess drawn like
the answers are is right (the sum of the squared answer shares)."""

from __future__ import annotations


import duckdb

from adapters.datasets.phantom import answer_options, version_of
from warehouse.connection import query_text

ORACLE = "blind-oracle"


def chance(template: str, n_distinct: int, sum_sq_share: float, options: dict) -> tuple[str, float]:
    """(what k is, chance) for one template."""
    if template in options:
        k = options[template]
        return (str(k), 1 / k) if k else ("mm", sum_sq_share)
    return (str(n_distinct), 1 / n_distinct)


def rows(con: duckdb.DuckDBPyConnection, dataset: str, panel: str) -> list[dict]:
    """One row per template of `dataset`, with the blind-oracle run's accuracy under `panel`
    (templates asked in one volume only are not templates). Empty when there is no such run."""
    out, options = [], answer_options(version_of(dataset))
    for template, asked, k_seen, top, sum_sq, oracle in con.execute(
            query_text("blind_ceiling.sql"), {"dataset": dataset, "panel": panel, "oracle": ORACLE}).fetchall():
        k, p = chance(template, k_seen, sum_sq, options)
        out.append({"template": template, "asked": asked, "answers": k, "chance": p,
                    "blind_oracle": oracle, "commonest_answer_share": top})
    return out


def overall(table: list[dict]) -> dict | None:
    """Question-weighted chance and blind-oracle accuracy over the templates."""
    n = sum(r["asked"] for r in table)
    if not n or any(r["blind_oracle"] is None for r in table):
        return None
    return {"asked": n, "chance": sum(r["chance"] * r["asked"] for r in table) / n,
            "blind_oracle": sum(r["blind_oracle"] * r["asked"] for r in table) / n}
