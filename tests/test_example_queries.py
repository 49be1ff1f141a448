"""The analysts page's example queries (docs/analysts.md) (every ```sql block of its "Five example queries" section) run against a
real warehouse, so they stay true."""

from __future__ import annotations

import re
from pathlib import Path

import duckdb
import pytest

from tasks import statistics

README = Path(__file__).resolve().parent.parent / "docs" / "analysts.md"      # moved there from the README
EXPECTED_COLUMNS = [
    ["panel", "model", "majority_pct", "ci_low_pct", "ci_high_pct", "coverage_pct"],
    ["qid", "m3d", "merlin", "radfm"],
    ["category", "m3d", "merlin", "radfm"],
    ["qid", "question", "answer", "n_models", "n_correct"],
    ["model", "judge", "says_correct_pct", "n_valid", "n_no_verdict", "mean_kappa_with_others"],
]


def readme_queries() -> list[str]:
    text = README.read_text()
    section = text.split("## Five example queries", 1)[1].split("\n#", 1)[0]
    return re.findall(r"```sql\n(.*?)```", section, flags=re.S)


def test_the_readme_has_five_example_queries():
    assert len(readme_queries()) == 5


@pytest.mark.parametrize("index", range(5))
def test_example_query_runs_on_the_example_warehouse(mini_db, index):
    statistics.refresh_statistics(mini_db, n_resamples=100)
    con = duckdb.connect(str(mini_db), read_only=True)
    try:
        result = con.execute(readme_queries()[index])
        columns = [d[0] for d in result.description]
        rows = result.fetchall()
    finally:
        con.close()
    assert columns == EXPECTED_COLUMNS[index]
    assert rows, f"example query {index + 1} returned no rows on the example data"
