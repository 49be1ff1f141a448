"""The HTML report in a real headless browser: every chart renders with no network, and a model output
carrying HTML/script renders as text and never runs."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import duckdb
import pytest

from tasks import statistics
from tasks.report_html import write_report

PAYLOAD = ("</script><script>document.body.setAttribute('data-pwned','1')</script>"
           "<img src=x onerror=\"document.body.setAttribute('data-pwned','2')\"><b>bold?</b>")


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    pytest.skip("no headless Chromium (scripts/setup.sh installs Debian's chromium when run as root)")


def _dump_dom(html: Path, tmp_path: Path) -> str:
    done = subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=20000", "--dump-dom", html.as_uri()],
        capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_report_renders_offline_and_escapes_model_output(mini_db, tmp_path):
    con = duckdb.connect(str(mini_db))
    qid = con.execute("SELECT qid FROM questions ORDER BY hash(qid), qid LIMIT 1").fetchone()[0]  # an example row
    con.execute("UPDATE predictions SET text = ?, status = 'ok', reason = NULL WHERE qid = ? AND run_id = "
                "(SELECT min(run_id) FROM runs)", [PAYLOAD, qid])
    con.close()
    statistics.refresh_statistics(mini_db, n_resamples=200)
    report = write_report(mini_db, tmp_path / "report")
    page = report.html.read_text()
    assert "http://" not in page.split("<body>")[1] and "https://cdn" not in page    # nothing fetched
    assert PAYLOAD not in page and "&lt;/script&gt;&lt;script&gt;" in page
    assert {p.suffix for p in report.images} == {".png", ".svg"}
    assert all(p.stat().st_size > 1000 for p in report.images)

    dom = _dump_dom(report.html, tmp_path)
    charts = ("accuracy", "categories", "heatmap", "judge_agreement", "answer_lengths")
    for name in charts:
        start = dom.index(f'id="chart-{name}"')
        assert 'data-rendered="yes"' in dom[start:start + 300], f"chart {name} did not render"
        assert "<svg" in dom[start:start + 3000], f"chart {name} has no SVG"
    body_tag = re.search(r"<body[^>]*>", dom)[0]
    assert "data-pwned" not in body_tag                            # neither the script nor the onerror ran
    assert "&lt;b&gt;bold?&lt;/b&gt;" in dom                       # shown as text


def test_report_refuses_an_unknown_panel(mini_db, tmp_path):
    with pytest.raises(ValueError, match="panel 'nope' has no verdicts in dataset 'ct-spatialvqa'; panels: upstream"):
        write_report(mini_db, tmp_path / "r", panel="nope")


def test_report_order_colours_lengths_and_the_published_rows(mini_db, tmp_path):
    """Headline and leaderboard first, the charts, then the long tables; one colour per model in every
    chart; answer lengths as whole-word distributions per source; the published rows beside the runs."""
    import json

    from tasks.report_html import model_colours

    report = write_report(mini_db, tmp_path / "report", images=False)
    page = report.html.read_text()
    first_chart = page.index('class="chart"')
    assert page.index("<h2>Headline</h2>") < page.index("<h2>Your runs among the published ones") < first_chart
    assert first_chart < page.index("<h2>Example answers")
    board = page[page.index("<h2>Your runs among the published ones"):first_chart]
    assert "published figure" in board and "CT-CHAT" in board and "published predictions" in board
    assert "the published figures are over all 9,077" in board
    specs = {m["id"]: json.loads(m["spec"].replace("\\u003c", "<").replace("\\u003e", ">").replace("\\u0026", "&"))
             for m in re.finditer(r'data-chart="chart-(?P<id>[a-z_]+)">(?P<spec>.*?)</script>', page)}
    scale = model_colours(["m3d", "merlin", "radfm"]).to_dict()

    def colour_scales(spec):
        found = []

        def walk(x):
            if isinstance(x, dict):
                if "color" in x and isinstance(x["color"], dict) and "scale" in x["color"]:
                    found.append(x["color"]["scale"])
                for v in x.values():
                    walk(v)
            elif isinstance(x, list):
                for v in x:
                    walk(v)
        walk(spec)
        return found

    for name in ("accuracy", "categories", "answer_lengths"):
        assert colour_scales(specs[name]) and all(s == scale for s in colour_scales(specs[name])), name
    lengths = specs["answer_lengths"]
    assert '"tickMinStep": 1' in json.dumps(lengths) and '"format": "d"' in json.dumps(lengths)
    data = next(iter(lengths["datasets"].values()))
    assert [d["source"] for d in data] == ["questions", "references", "m3d", "merlin", "radfm"]
    assert all(isinstance(d["median"], int) and d["q1"] <= d["median"] <= d["q3"] for d in data)
