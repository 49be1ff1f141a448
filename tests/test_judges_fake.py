"""LLM judges through the real openai, google-genai and dashscope clients, against a local fake
server that speaks each provider's wire format and misbehaves on request. Every test asserts what
lands in the warehouse."""

from __future__ import annotations

import json

import duckdb
import pytest
import yaml

import adapters.judges.base as judge_base
import warehouse
from adapters.judges.spec import JudgeConfigError, load_panel
from tasks import judging
from tests.fake_providers import FakeProviders, delay, fault, oracle, status

KEYS = {"OPENAI_API_KEY": "sk-test-openai-SECRET-1234", "GEMINI_API_KEY": "gm-test-SECRET-5678",
        "DASHSCOPE_API_KEY": "ds-test-SECRET-9012"}
PATHS = {"openai": "/v1", "dashscope-compatible": "/compatible-mode/v1", "gemini": "", "dashscope": "/api/v1"}
M3D = "ct-spatialvqa/upstream/m3d"
A0_Q = "Which side is the nodule on?"          # in the first batch of m3d, and alone in its own call


@pytest.fixture(scope="module")
def server():
    fake = FakeProviders().start()
    yield fake
    fake.stop()


@pytest.fixture
def fake(server, monkeypatch):
    server.log.clear()
    for queue in server._faults.values():
        queue.clear()
    server.latency_s, server.rpm, server.verdict = 0.0, None, None
    for k, v in KEYS.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(judge_base, "BACKOFF_BASE_S", 0.01)   # keep retry waits short in tests
    return server


def make_panel(tmp_path, fake, api: str, prompt: str = "upstream-batch5-v1", **extra):
    judge = {"name": f"{api}-judge", "provider": api, "model": f"{api}-model", "prompt": prompt,
             "base_url": fake.url + PATHS[api], "structured": False, "max_attempts": 4, "timeout_s": 5,
             "price_per_1m_input": 1.0, "price_per_1m_output": 2.0, "max_concurrency": 1, **extra}
    path = tmp_path / f"{api}.yaml"
    path.write_text(yaml.safe_dump({"panel": "test", "judges": [judge]}))
    return load_panel(path)


def judge_m3d(db, panel, runs=("m3d",), **kw):
    judging.register_panel(db, panel)
    return judging.judge_runs(db, panel.judges[0], list(runs), **kw)


def stored(db, run_id=M3D):
    con = duckdb.connect(str(db), read_only=True)
    try:
        rows = con.execute(
            "SELECT j.qid, j.verdict, j.status, j.reason, j.raw_response, j.source, q.answer, p.text "
            "FROM judgments j JOIN predictions p USING (run_id, qid) JOIN questions q USING (qid) "
            "WHERE j.run_id = ? AND j.judge_id NOT LIKE 'upstream/%'", [run_id]).fetchall()
        return {r[0]: r[1:] for r in rows}
    finally:
        con.close()


def calls(db):
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute("SELECT n_items, attempts, status, error, tokens_in, tokens_out, cost_usd "
                           "FROM judge_calls ORDER BY created_at").fetchall()
    finally:
        con.close()


def assert_all_match_oracle(db, run_id=M3D, n=8):
    got = stored(db, run_id)
    assert len(got) == n
    for qid, (verdict, status_, reason, raw, source, answer, prediction) in got.items():
        assert status_ == "ok", (qid, status_, reason)
        assert verdict == oracle(answer, prediction), qid


@pytest.mark.parametrize("api", ["openai", "dashscope-compatible", "gemini", "dashscope"])
def test_batch_prompt_through_each_client(tmp_path, mini_db, fake, api):
    summary = judge_m3d(mini_db, make_panel(tmp_path, fake, api))
    assert_all_match_oracle(mini_db)
    # 8 predictions, of which 3 identical ("No" to the same question/answer): 6 distinct, 2 calls
    assert summary.pending == 8 and summary.distinct_sent == 6
    assert sorted((n, a, s) for n, a, s, *_ in calls(mini_db)) == [(1, 1, "ok"), (5, 1, "ok")]
    assert all(t_in and t_out and cost > 0 for *_, t_in, t_out, cost in calls(mini_db))
    secret = KEYS["GEMINI_API_KEY" if api == "gemini" else "OPENAI_API_KEY" if api == "openai" else
                  "DASHSCOPE_API_KEY"]
    assert all(secret in r.auth for r in fake.requests(api))


@pytest.mark.parametrize("api", ["openai", "gemini", "dashscope"])
def test_per_item_prompt_with_structured_output(tmp_path, mini_db, fake, api):
    judge_m3d(mini_db, make_panel(tmp_path, fake, api, prompt="radiologist-yesno-v1", structured=True))
    assert_all_match_oracle(mini_db)
    assert len(fake.requests(api)) == 6                     # one call per distinct item
    request = fake.requests(api)[0].body
    if api == "openai":
        assert request["response_format"]["type"] == "json_schema"
    elif api == "gemini":
        assert request["generationConfig"]["responseMimeType"] == "application/json"
    else:
        assert request["parameters"]["response_format"] == {"type": "json_object"}


@pytest.mark.parametrize("api, retry_after", [("openai", "0.3"), ("openai", None), ("gemini", "0.3"),
                                              ("gemini", None), ("dashscope", None), ("dashscope-compatible", "0.3")])
def test_rate_limited_then_served(tmp_path, mini_db, fake, api, retry_after):
    fake.fail(api, status(429, retry_after), match=A0_Q)
    judge_m3d(mini_db, make_panel(tmp_path, fake, api))
    assert_all_match_oracle(mini_db)
    attempts = sorted(a for _, a, *_ in calls(mini_db))
    assert attempts == [1, 2]                               # one call needed a second attempt
    assert len(fake.requests(api, "status 429")) == 1


@pytest.mark.parametrize("code", [500, 503])
@pytest.mark.parametrize("api", ["openai", "gemini", "dashscope"])
def test_server_errors_are_retried(tmp_path, mini_db, fake, api, code):
    fake.fail(api, status(code), status(code), match=A0_Q)
    judge_m3d(mini_db, make_panel(tmp_path, fake, api))
    assert_all_match_oracle(mini_db)
    assert sorted(a for _, a, *_ in calls(mini_db)) == [1, 3]


def test_failure_after_last_attempt_is_stored_and_retried_on_the_next_run(tmp_path, mini_db, fake):
    panel = make_panel(tmp_path, fake, "openai", max_attempts=2)
    fake.fail("openai", status(503), status(503), match=A0_Q)    # the first call's 2 attempts
    judge_m3d(mini_db, panel)
    got = stored(mini_db)
    failed = {q for q, row in got.items() if row[1] == "error"}
    assert len(failed) == 7                                 # the 5-item call (A1/B0/C0 share an item)
    assert all(got[q][0] is None and "HTTP 503" in got[q][2] for q in failed)
    con = duckdb.connect(str(mini_db), read_only=True)
    assert con.execute("SELECT count(*) FROM judge_cache").fetchone() == (1,)     # failures never cached
    con.close()
    summary = judge_m3d(mini_db, panel)                     # transient failures are picked up again
    assert summary.pending == 7
    assert_all_match_oracle(mini_db)


def test_slow_reply_past_the_timeout(tmp_path, mini_db, fake):
    fake.fail("openai", delay(3), match=A0_Q)
    judge_m3d(mini_db, make_panel(tmp_path, fake, "openai", timeout_s=0.5))
    assert_all_match_oracle(mini_db)
    assert sorted(a for _, a, *_ in calls(mini_db)) == [1, 2]


@pytest.mark.parametrize("api", ["openai", "gemini"])
def test_timeout_on_every_attempt_is_a_timeout(tmp_path, mini_db, fake, api):
    fake.fail(api, delay(2), delay(2), match=A0_Q)
    judge_m3d(mini_db, make_panel(tmp_path, fake, api, timeout_s=0.4, max_attempts=2,
                                  prompt="radiologist-yesno-v1"))
    statuses = [row[1] for row in stored(mini_db).values()]
    assert statuses.count("timeout") == 1 and statuses.count("ok") == 7


@pytest.mark.parametrize("api", ["openai", "dashscope-compatible"])
def test_malformed_json_body_is_an_error_not_a_verdict(tmp_path, mini_db, fake, api):
    fake.fail(api, fault("malformed"), match=A0_Q)
    judge_m3d(mini_db, make_panel(tmp_path, fake, api, prompt="radiologist-yesno-v1"))
    got = stored(mini_db)
    bad = [row for row in got.values() if row[1] != "ok"]
    assert len(bad) == 1 and bad[0][0] is None and bad[0][1] == "error"
    assert "unexpected response" in bad[0][2]


@pytest.mark.parametrize("api", ["openai", "gemini", "dashscope"])
def test_wrong_content_type_is_an_error(tmp_path, mini_db, fake, api):
    fake.fail(api, fault("html"), match=A0_Q)
    judge_m3d(mini_db, make_panel(tmp_path, fake, api, prompt="radiologist-yesno-v1"))
    bad = [row for row in stored(mini_db).values() if row[1] != "ok"]
    assert len(bad) == 1 and bad[0][0] is None and bad[0][1] == "error" and bad[0][2]


def test_fenced_json_is_parsed(tmp_path, mini_db, fake):
    fake.fail("gemini", fault("fenced"), match=A0_Q)
    judge_m3d(mini_db, make_panel(tmp_path, fake, "gemini"))
    assert_all_match_oracle(mini_db)
    assert len(fake.requests("gemini")) == 2


@pytest.mark.parametrize("kind", ["short", "duplicate", "out_of_range", "string_verdict"])
def test_unsettled_batch_items_are_asked_again_alone(tmp_path, mini_db, fake, kind):
    fake.fail("openai", fault(kind), match=A0_Q)
    judge_m3d(mini_db, make_panel(tmp_path, fake, "openai"))
    assert_all_match_oracle(mini_db)
    requests = fake.requests("openai")
    assert sorted(len(r.items) for r in requests) == [1, 1, 5]   # the faulty batch, its re-ask, the 6th item
    batch = next(r for r in requests if len(r.items) == 5)
    assert sum(r.items[0] in batch.items for r in requests if len(r.items) == 1) == 1


def test_reordered_batch_is_matched_by_index(tmp_path, mini_db, fake):
    fake.fail("openai", fault("reorder"), match=A0_Q)
    judge_m3d(mini_db, make_panel(tmp_path, fake, "openai"))
    assert_all_match_oracle(mini_db)
    assert sorted(len(r.items) for r in fake.requests("openai")) == [1, 5]   # nothing asked twice


def test_unparseable_single_reply_is_stored_raw(tmp_path, mini_db, fake):
    fake.fail("openai", fault("prose"), match=A0_Q)
    judge_m3d(mini_db, make_panel(tmp_path, fake, "openai", prompt="radiologist-yesno-v1"))
    bad = [row for row in stored(mini_db).values() if row[1] != "ok"]
    assert len(bad) == 1
    verdict, status_, reason, raw, *_ = bad[0]
    assert (verdict, status_) == (None, "unparsed") and raw.startswith("I believe")


def test_unparseable_batch_is_asked_again_item_by_item(tmp_path, mini_db, fake):
    fake.fail("dashscope", fault("prose"), match=A0_Q)
    judge_m3d(mini_db, make_panel(tmp_path, fake, "dashscope"))
    assert_all_match_oracle(mini_db)
    assert sorted(len(r.items) for r in fake.requests("dashscope")) == [1, 1, 1, 1, 1, 1, 5]


@pytest.mark.parametrize("api", ["openai", "gemini", "dashscope"])
def test_safety_block(tmp_path, mini_db, fake, api):
    fake.fail(api, fault("blocked"), match=A0_Q)
    judge_m3d(mini_db, make_panel(tmp_path, fake, api, prompt="radiologist-yesno-v1"))
    bad = [row for row in stored(mini_db).values() if row[1] != "ok"]
    assert len(bad) == 1 and bad[0][0] is None and bad[0][1] == "blocked"
    assert len(fake.requests(api)) == 6                     # a block is not retried


def test_blocked_batch_is_split_so_one_item_cannot_block_five(tmp_path, mini_db, fake):
    fake.fail("gemini", fault("blocked"), match=A0_Q)
    judge_m3d(mini_db, make_panel(tmp_path, fake, "gemini"))
    assert_all_match_oracle(mini_db)
    assert sorted(len(r.items) for r in fake.requests("gemini")) == [1, 1, 1, 1, 1, 1, 5]


def test_empty_reply_is_unparsed(tmp_path, mini_db, fake):
    fake.fail("gemini", fault("empty"), match=A0_Q)
    judge_m3d(mini_db, make_panel(tmp_path, fake, "gemini", prompt="radiologist-yesno-v1"))
    bad = [row for row in stored(mini_db).values() if row[1] != "ok"]
    assert len(bad) == 1 and bad[0][1] == "unparsed" and bad[0][0] is None


def test_identical_content_is_never_sent_twice_across_runs(tmp_path, mini_db, fake):
    panel = make_panel(tmp_path, fake, "openai")
    judge_m3d(mini_db, panel, runs=("m3d",))
    sent_before = len(fake.asked_items())
    summary = judge_m3d(mini_db, panel, runs=("radfm",))
    # radfm answers "No" to the pleural-effusion question three times, as m3d did: cached
    assert summary.from_cache == 3
    asked_for_radfm = fake.asked_items()[sent_before:]
    assert ("Is there pleural effusion?", "No pleural effusion.", "No") not in asked_for_radfm
    assert len(asked_for_radfm) == summary.distinct_sent
    got = stored(mini_db, "ct-spatialvqa/upstream/radfm")
    assert {row[4] for row in got.values()} == {"cache", "judge"}
    assert all(row[1] == "ok" for row in got.values())
    # a second identical call sends nothing and adds nothing
    n_requests = len(fake.requests())
    again = judge_m3d(mini_db, panel, runs=("m3d", "radfm"))
    assert again.pending == 0 and len(fake.requests()) == n_requests


def test_share_verdicts_false_judges_every_item_on_its_own(tmp_path, mini_db, fake):
    """As the upstream scripts did: identical items of one run and of another run are each sent."""
    from tasks.report import shared_note

    panel = make_panel(tmp_path, fake, "openai", share_verdicts=False)
    first = judge_m3d(mini_db, panel, runs=("m3d",))
    assert first.pending == 8 and first.distinct_sent == 8 and len(fake.asked_items()) == 8
    second = judge_m3d(mini_db, panel, runs=("radfm",))
    assert second.from_cache == 0 and second.distinct_sent == second.pending
    assert fake.asked_items().count(("Is there pleural effusion?", "No pleural effusion.", "No")) >= 6
    assert_all_match_oracle(mini_db)
    with warehouse.reader(mini_db) as con:
        assert shared_note(con, "ct-spatialvqa") is None
        assert con.execute("SELECT sum(n_shared) FROM shared_verdicts").fetchone()[0] == 0
    with pytest.raises(JudgeConfigError, match="share_verdicts must be true or false"):
        make_panel(tmp_path, fake, "openai", share_verdicts="no")


def test_shared_verdicts_are_counted_and_named_in_the_report(tmp_path, mini_db, fake):
    from tasks.report import shared_note

    panel = make_panel(tmp_path, fake, "openai")
    judge_m3d(mini_db, panel, runs=("m3d",))
    judge_m3d(mini_db, panel, runs=("radfm",))
    with warehouse.reader(mini_db) as con:
        per_run = dict(con.execute("SELECT model, n_shared FROM shared_verdicts").fetchall())
        note = shared_note(con, "ct-spatialvqa")
    assert per_run["m3d"] == 2 and per_run["radfm"] == 3        # 3 identical "No" in m3d: 1 sent; radfm's 3 cached
    assert note and "openai-judge 5 of" in note


def test_the_older_gemini_prompt_asks_for_reasoning_and_is_its_own_judge(tmp_path, mini_db, fake):
    old = make_panel(tmp_path, fake, "gemini", prompt="upstream-batch5-gemini-reasoning-v1")
    new = make_panel(tmp_path, fake, "gemini")
    assert old.judges[0].judge_id != new.judges[0].judge_id
    judge_m3d(mini_db, old)
    assert_all_match_oracle(mini_db)
    prompt = json.dumps(fake.requests("gemini")[0].body)
    assert '\\"reasoning\\": \\"short justification\\"' in prompt
    from adapters.judges.spec import load_panel as load

    preset = load("paper-gemini-reasoning")
    gemini = next(j for j in preset.judges if j.provider == "gemini")
    assert gemini.prompt == "upstream-batch5-gemini-reasoning-v1"
    # GPT and Qwen are the paper preset's judges: their verdicts are shared between the two panels
    paper = {j.provider: j.judge_id for j in load("paper").judges}
    assert {j.provider: j.judge_id for j in preset.judges if j.provider != "gemini"} == \
        {k: v for k, v in paper.items() if k != "gemini"}


def test_dry_run_forecasts_and_sends_nothing(tmp_path, mini_db, fake):
    panel = make_panel(tmp_path, fake, "openai")
    rows = judging.forecast(mini_db, panel, ["m3d"])
    assert rows[0]["pending"] == 8 and rows[0]["distinct_to_send"] == 6 and rows[0]["calls"] == 2
    assert rows[0]["tokens_in"] > 100 and rows[0]["cost_usd"] > 0
    assert fake.requests() == []


def test_secrets_never_stored_or_logged(tmp_path, mini_db, fake, caplog):
    caplog.set_level("DEBUG")
    fake.fail("openai", status(503), fault("prose"), status(401), match=A0_Q)
    panel = make_panel(tmp_path, fake, "openai", max_attempts=2)
    judge_m3d(mini_db, panel)
    con = duckdb.connect(str(mini_db), read_only=True)
    dump = []
    for schema, table in con.execute("SELECT schema_name, table_name FROM duckdb_tables()").fetchall():
        dump += [repr(r) for r in con.execute(f'SELECT * FROM "{schema}"."{table}"').fetchall()]
    con.close()
    text = "\n".join(dump) + caplog.text
    for secret in KEYS.values():
        assert secret not in text
    assert "OPENAI_API_KEY" not in text or True             # the variable's name may appear, never its value
    assert any("HTTP 401" in line for line in dump)          # the failure itself was stored


def test_missing_key_fails_before_any_call(tmp_path, mini_db, fake, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    from adapters.judges.keys import MissingKey

    with pytest.raises(MissingKey, match="OPENAI_API_KEY"):
        judge_m3d(mini_db, make_panel(tmp_path, fake, "openai"))
    assert fake.requests() == []


def test_openai_compatible_local_judge(tmp_path, mini_db, fake, monkeypatch):
    """Any OpenAI-compatible base_url (vLLM, llama.cpp, Ollama) works, with or without a key."""
    judge = {"name": "local", "provider": "openai-compatible", "model": "qwen2.5-7b-instruct",
             "prompt": "radiologist-yesno-v1", "base_url": fake.url + "/v1", "max_concurrency": 1}
    path = tmp_path / "local.yaml"
    path.write_text(yaml.safe_dump({"panel": "local", "judges": [judge]}))
    judge_m3d(mini_db, load_panel(path))
    assert_all_match_oracle(mini_db)
    assert {r.body["model"] for r in fake.requests("openai")} == {"qwen2.5-7b-instruct"}
    assert all(r.auth == "Bearer not-needed" for r in fake.requests("openai"))


def test_bad_judges_files_are_refused(tmp_path):
    from adapters.judges.spec import JudgeConfigError

    cases = {
        "provider 'claude' is not one of": {"judges": [{"name": "a", "provider": "claude", "model": "m"}]},
        "unknown prompt": {"judges": [{"name": "a", "provider": "openai", "model": "m", "prompt": "nope-v9"}]},
        r"unknown field\(s\) \['temprature'\]": {"judges": [{"name": "a", "provider": "openai", "model": "m", "temprature": 0}]},
        "unique": {"judges": [{"name": "a", "provider": "exact", "model": "exact-v1"}] * 2},
        "needs a base_url": {"judges": [{"name": "a", "provider": "openai-compatible", "model": "m"}]},
        "non-empty 'judges' list": {"panel": "x"},
    }
    for message, content in cases.items():
        path = tmp_path / "j.yaml"
        path.write_text(yaml.safe_dump(content))
        with pytest.raises(JudgeConfigError, match=message):
            load_panel(path)
    with pytest.raises(JudgeConfigError, match="neither a judges file nor a preset"):
        load_panel("no-such-preset")


def test_identity_ignores_rates_and_names_but_not_decoding():
    from dataclasses import replace

    spec = load_panel("paper").judges[0]
    assert replace(spec, name="x", requests_per_minute=1, max_concurrency=99).judge_id == spec.judge_id
    assert replace(spec, temperature=0.7).judge_id != spec.judge_id
    assert replace(spec, prompt="radiologist-yesno-v1").judge_id != spec.judge_id
