"""Kill the judging process mid-run (SIGKILL), run it again: every prediction ends judged exactly
once, and nothing whose verdict was stored before the kill is sent again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import duckdb
import pytest

import warehouse
from tests.conftest import REPO
from tests.test_judges_fake import KEYS, fake, make_panel, server  # noqa: F401  (fixtures)


def judged(db) -> set[tuple[str, str, str]]:
    with warehouse.connect(db, read_only=True, timeout=10) as con:
        return set(con.execute(
            "SELECT q.question, q.answer, p.text FROM judgments j JOIN predictions p USING (run_id, qid) "
            "JOIN questions q USING (qid) WHERE j.judge_id LIKE 'openai/%' AND j.status = 'ok'").fetchall())


def test_kill_and_resume(tmp_path, mini_db, fake):  # noqa: F811
    panel = make_panel(tmp_path, fake, "openai", prompt="radiologist-yesno-v1")
    fake.latency_s = 0.4
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(REPO)!r})
        from adapters.judges.spec import load_panel
        from tasks import judging
        panel = load_panel({panel.source!r})
        judging.register_panel({str(mini_db)!r}, panel)
        judging.judge_runs({str(mini_db)!r}, panel.judges[0], None, flush_every=1)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, **KEYS})
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail("the judging process finished before it could be killed")
            try:
                if len(judged(mini_db)) >= 3:
                    break
            except (warehouse.WarehouseLocked, duckdb.Error):
                pass
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    before_kill = judged(mini_db)
    with warehouse.connect(mini_db, read_only=True) as con:
        rows_before = con.execute("SELECT count(*) FROM judgments WHERE judge_id LIKE 'openai/%'").fetchone()[0]
    sent_before_restart = len(fake.requests("openai"))
    assert 3 <= len(before_kill) < 16

    fake.latency_s = 0.0
    from tasks import judging

    summary = judging.judge_runs(mini_db, panel.judges[0], None)
    asked_after = {item for r in fake.requests("openai")[sent_before_restart:] for item in r.items}
    assert not asked_after & before_kill                    # nothing stored was paid for again
    with warehouse.connect(mini_db, read_only=True) as con:
        rows = con.execute("SELECT run_id, qid, status FROM judgments WHERE judge_id LIKE 'openai/%'").fetchall()
        answered = con.execute("SELECT count(*) FROM predictions WHERE status = 'ok'").fetchone()[0]
    assert len(rows) == len({(r, q) for r, q, _ in rows}) == answered == 23
    assert {s for *_, s in rows} == {"ok"}
    # every distinct item was sent at most once more than it needed: only a call in flight, or one
    # whose reply came within the last flush interval before the kill, can be lost
    all_asked = [item for r in fake.requests("openai") for item in r.items]
    recent = [r for r in fake.requests("openai")[:sent_before_restart] if r.t_reply >= killed_at - judging.FLUSH_SECONDS]
    assert len(all_asked) <= 16 + len(recent) + 1
    assert summary.pending == 23 - rows_before               # the restart picked up exactly the rest
