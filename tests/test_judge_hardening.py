"""Judging under a hostile world (issue 7, items 1-4): two judges that differ only in their server,
a kill -9 at a random moment, Ctrl-C, every call refused, replies that are cut or leave items out."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import duckdb
import pytest
import yaml

import warehouse
from adapters.judges.spec import JudgeConfigError, load_panel
from tasks import judging
from tests.conftest import REPO
from tests.fake_providers import FakeProviders, fault, status
from tests.synthetic_judging import build_warehouse
from tests.test_judges_fake import A0_Q, KEYS, assert_all_match_oracle, fake, judge_m3d, make_panel, \
    server, stored  # noqa: F401  (fixtures)


def write_panel(tmp_path, judges: list[dict], name="hardening"):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"panel": name, "judges": judges}))
    return path


def local_judge(name: str, url: str, **extra) -> dict:
    return {"name": name, "provider": "openai-compatible", "model": "qwen2.5-7b-instruct",
            "prompt": "radiologist-yesno-v1", "base_url": url + "/v1", "max_concurrency": 1, "timeout_s": 5,
            **extra}


def q(db, sql, params=()):
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(sql, list(params)).fetchall()


# --- 1. identity --------------------------------------------------------------------------------

def test_same_model_on_two_servers_is_two_judges(tmp_path, mini_db, fake):
    fake.verdict = True
    other = FakeProviders(verdict=False).start()
    try:
        panel = load_panel(write_panel(tmp_path, [local_judge("yes-server", fake.url),
                                                  local_judge("no-server", other.url)]))
        yes, no = panel.judges
        assert yes.judge_id != no.judge_id
        judging.register_panel(mini_db, panel)
        with ThreadPoolExecutor(2) as pool:            # in parallel, as the flow runs them
            list(pool.map(lambda s: judging.judge_runs(mini_db, s, ["m3d"]), panel.judges))
        assert len(fake.requests("openai")) == len(other.requests("openai")) == 6      # both sent
        for spec, expected in ((yes, True), (no, False)):
            rows = q(mini_db, "SELECT verdict, status FROM judgments WHERE judge_id = ?", [spec.judge_id])
            assert rows == [(expected, "ok")] * 8, spec.name
        assert q(mini_db, "SELECT count(DISTINCT judge_id) FROM judge_cache") == [(2,)]
    finally:
        other.stop()


def test_endpoint_is_part_of_identity_for_every_provider(monkeypatch):
    base = {"openai": "https://api.openai.com/v1", "gemini": "https://generativelanguage.googleapis.com",
            "dashscope": "https://dashscope.aliyuncs.com/api/v1",
            "dashscope-compatible": "https://dashscope.aliyuncs.com/compatible-mode/v1"}
    for var in ("OPENAI_BASE_URL", "GOOGLE_GEMINI_BASE_URL", "DASHSCOPE_HTTP_BASE_URL",
                "DASHSCOPE_COMPATIBLE_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    spec = load_panel("paper").judges[0]
    for provider, default in base.items():
        plain = replace(spec, provider=provider, base_url=None)
        assert plain.endpoint == default
        # the default written out, with another case, default port and trailing slash, is the same judge
        loud = default.replace("https://", "HTTPS://").replace(".com", ".com:443") + "/"
        assert replace(plain, base_url=loud).judge_id == plain.judge_id
        assert replace(plain, base_url="http://127.0.0.1:8000").judge_id != plain.judge_id, provider
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    assert replace(spec, base_url=None).judge_id != replace(spec, base_url=base["openai"]).judge_id


def test_panel_whose_judges_collide_is_refused_before_anything_is_sent(tmp_path, mini_db, fake):
    url = fake.url
    loud = url.replace("http://127.0.0.1", "HTTP://127.0.0.1")
    path = write_panel(tmp_path, [local_judge("first", url), local_judge("second", loud, base_url=loud + "/v1/")])
    with pytest.raises(JudgeConfigError) as info:
        load_panel(path)
    message = str(info.value)
    assert "'first'" in message and "'second'" in message and "\n" not in message
    assert fake.requests() == []


def test_gemini_base_url_is_the_bare_host(tmp_path):
    path = write_panel(tmp_path, [{"name": "g", "provider": "gemini", "model": "gemini-2.5-flash",
                                   "base_url": "https://generativelanguage.googleapis.com/v1beta"}])
    with pytest.raises(JudgeConfigError, match="bare host"):
        load_panel(path)


def test_dry_run_shows_each_judges_identity(tmp_path, mini_db, fake):
    panel = load_panel(write_panel(tmp_path, [local_judge("a", fake.url), local_judge("b", fake.url + "/x")]))
    text = judging.format_forecast(judging.forecast(mini_db, panel, ["m3d"]))
    for spec in panel.judges:
        assert spec.judge_id in text and spec.endpoint in text
    assert fake.requests() == []


# --- 4. replies that are cut or leave items out, exit status and messages -----------------------

@pytest.mark.parametrize("kind", ["truncated", "cut"])
def test_truncated_one_item_reply_is_asked_again(tmp_path, mini_db, fake, kind):
    fake.fail("openai", fault(kind), match=A0_Q)       # cut at max_tokens, or JSON that just stops
    judge_m3d(mini_db, make_panel(tmp_path, fake, "openai", prompt="radiologist-yesno-v1", structured=True))
    assert_all_match_oracle(mini_db)
    assert len(fake.requests("openai")) == 7                # 6 items, one asked twice


def test_item_left_out_of_a_batch_is_no_verdict_not_in_the_reply(tmp_path, mini_db, fake):
    panel = make_panel(tmp_path, fake, "openai")
    with warehouse.reader(mini_db) as con:
        work, _ = judging.pending_work(con, panel.judges[0], ["m3d"], False)
    last = work[4].item                                     # the last of the first batch: 'short' drops it
    text = f"Question: {last.question}\n   Answer: {last.answer}\n   Prediction: {last.prediction}"
    fake.fail("openai", fault("short"), fault("short"), match=text)       # the batch, then the re-ask
    judge_m3d(mini_db, panel)
    bad = {row for row in stored(mini_db).values() if row[1] != "ok"}
    assert {(verdict, status_, reason) for verdict, status_, reason, *_ in bad} == {
        (None, "no_verdict", "not in the reply, also when asked alone")}
    assert sorted(len(r.items) for r in fake.requests("openai")) == [1, 1, 5]


def test_unknown_run_is_an_error_listing_the_known_runs(mini_db, capsys):
    from flows.cli import main

    assert main(["judge", "--judges", "offline", "--run", "m3d", "--run", "nope", "--db", str(mini_db)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "'nope'" in err
    for run in ("m3d", "radfm"):
        assert run in err


@pytest.mark.prefect
def test_every_call_failing_exits_non_zero_naming_the_cause(prefect_server, tmp_path, mini_db, fake, capsys):
    from flows.cli import main

    fake.fail("openai", *[status(401)] * 10)
    panel = make_panel(tmp_path, fake, "openai", prompt="radiologist-yesno-v1")
    assert main(["judge", "--judges", panel.source, "--run", "m3d", "--db", str(mini_db)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "openai-judge" in err[0] and "HTTP 401" in err[0], err
    assert KEYS["OPENAI_API_KEY"] not in err[0]
    statuses = q(mini_db, "SELECT status, count(*) FROM judgments WHERE judge_id = ? GROUP BY 1",
                 [panel.judges[0].judge_id])
    assert statuses == [("error", 8)]                       # the failures are stored, as failures


# --- 2. no verdict waits in memory --------------------------------------------------------------

FLUSH_S = 1.0


def _child_env():
    return {**os.environ, **KEYS, "PYTHONPATH": str(REPO)}


def test_kill_9_loses_no_verdict_older_than_one_flush_interval(tmp_path, fake):
    """A reply that arrived more than one flush interval before a kill -9 is never paid for again,
    even when its batch still had items being re-asked or retried."""
    db = tmp_path / "wh.duckdb"
    build_warehouse(db, 150)
    panel = load_panel(write_panel(tmp_path, [local_judge("batch", fake.url, prompt="upstream-batch5-v1",
                                                          max_concurrency=2, max_attempts=4)]))
    judging.register_panel(db, panel)
    fake.latency_s = 0.15
    # every third batch leaves an item out (a one-item re-ask), every fourth fails once (a retry)
    for i in range(0, 150, 15):
        fake.fail("openai", fault("short"), match=f"nodule number {i} located")
    for i in range(5, 150, 20):
        fake.fail("openai", status(503), match=f"nodule number {i} located")
    code = textwrap.dedent(f"""
        from adapters.judges.spec import load_panel
        from tasks import judging
        judging.judge_runs({str(db)!r}, load_panel({panel.source!r}).judges[0], None, flush_seconds={FLUSH_S})
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], env=_child_env(), cwd=REPO)
    try:
        target = random.Random().randint(50, 90)            # a random moment, mid-run
        deadline = time.monotonic() + 90
        while sum(len(r.answered) for r in fake.requests("openai")) < target:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the judging process ended (rc {proc.poll()}) or stalled before it could be killed")
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    answered_long_before = {item for r in fake.requests("openai") if r.t_reply < killed_at - FLUSH_S
                            for item in r.answered}
    n_before = len(fake.requests())
    fake.latency_s = 0.0
    leftover_faults = sum(len(queue) for queue in fake._faults.values())
    judging.judge_runs(db, panel.judges[0], None)
    resent = {item for r in fake.requests("openai")[n_before:] for item in r.items}
    assert answered_long_before and not resent & answered_long_before, sorted(resent & answered_long_before)[:3]
    # the faults not used before the kill hit the re-run's batches, which are grouped differently
    statuses = dict(q(db, "SELECT status, count(*) FROM judgments GROUP BY 1"))
    assert sum(statuses.values()) == 150 and statuses["ok"] >= 150 - leftover_faults, q(
        db, "SELECT qid, status, reason, raw_response FROM judgments WHERE status <> 'ok'")


# --- 3. Ctrl-C ----------------------------------------------------------------------------------

_INTERRUPTED = re.compile(r"^ctsvqa: interrupted: (\d+) judged, (\d+) left; run the same command to continue$")


@pytest.mark.prefect
def test_ctrl_c_stops_sending_stores_what_arrived_and_exits_non_zero(prefect_server, tmp_path, fake):
    from prefect.settings import PREFECT_API_URL

    db = tmp_path / "wh.duckdb"
    build_warehouse(db, 80)
    panel = write_panel(tmp_path, [local_judge("slow", fake.url, max_concurrency=2)])
    fake.latency_s = 0.3
    env = {**_child_env(), "PREFECT_API_URL": PREFECT_API_URL.value()}
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "judge", "--judges", str(panel), "--db", str(db)],
                            env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while len(fake.requests("openai")) < 6:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"judging ended or stalled before Ctrl-C: {proc.communicate(timeout=10)}")
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        sent_at_interrupt = len(fake.requests("openai"))
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    last = err.strip().splitlines()[-1]
    match = _INTERRUPTED.match(last)
    assert match, err
    judged, left = int(match.group(1)), int(match.group(2))
    requests = fake.requests("openai")
    assert len(requests) <= sent_at_interrupt + 2           # at most what was already on its way
    assert judged + left == 80 and left > 0
    assert q(db, "SELECT count(*) FROM judge_calls") == [(len(requests),)]      # every reply logged
    assert q(db, "SELECT status, count(*) FROM judgments GROUP BY 1") == [("ok", judged)]
    assert judged == len(requests)                          # every reply that arrived was stored
