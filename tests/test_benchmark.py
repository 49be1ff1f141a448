"""The main job end to end on a tiny phantom set: every stage stores its results, a second call
recomputes nothing, and a bad config is one clear error before anything runs."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from flows.cli import main
from tasks.benchmark_config import ConfigError, load_config

CONFIG = """
dataset:
  phantoms: {n: 3, seed: 5, size: small}
models:
  - model: phantom-expert
  - model: blind
  - {model: phantom-expert, ablate: shuffle-volumes}
judges: [offline]
"""


def _state(db: Path) -> dict:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return {t: con.execute(f"SELECT count(*), max(created_at) FROM {t}").fetchone()
                for t in ("predictions", "judgments", "text_scores", "model_inputs")}
    finally:
        con.close()


def test_benchmark_end_to_end_then_nothing_recomputed(prefect_server, tmp_path, capsys):
    cfg = tmp_path / "bench.yaml"
    cfg.write_text(CONFIG)
    db, out = tmp_path / "wh.duckdb", tmp_path / "out"
    args = ["benchmark", "--config", str(cfg), "--db", str(db), "--out", str(out)]
    assert main(args) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "panel offline" in printed and "phantom-expert-shuffled" in printed
    assert (out / "report" / "report.html").is_file() and (tmp_path / "wh-snapshot.duckdb").is_file()
    con = duckdb.connect(str(db), read_only=True)
    try:
        acc = dict(con.execute("SELECT model, majority_accuracy FROM model_accuracy WHERE panel = 'offline'").fetchall())
        n_q = con.execute("SELECT count(*) FROM questions").fetchone()[0]
        per_run = dict(con.execute("SELECT r.name, count(*) FROM predictions p JOIN runs r USING (run_id) "
                                   "GROUP BY 1").fetchall())
        scored = con.execute("SELECT count(DISTINCT run_id) FROM text_scores").fetchone()[0]
    finally:
        con.close()
    assert set(acc) == {"phantom-expert", "blind", "phantom-expert-shuffled"}
    assert per_run == {name: n_q for name in acc}
    assert scored == 3
    # the headline the command printed is the view's
    for name, value in acc.items():
        assert f"{100 * value:.1f}" in printed.split(name, 1)[1].splitlines()[0]
    before = _state(db)
    runs_before = _flow_run_names()
    assert main(args) == 0
    assert _state(db) == before                      # nothing answered, judged, scored or built again
    # no stage with nothing to do is started as a sub-flow (a second of Prefect's bookkeeping each)
    from collections import Counter

    added = Counter(_flow_run_names()) - Counter(runs_before)
    assert set(added) <= {"benchmark/bench", "score/phantom-expert,blind,phantom-expert-shuffled"}, added


def _flow_run_names() -> list[str]:
    import asyncio

    from prefect import get_client

    async def names():
        async with get_client() as client:
            return [r.name for r in await client.read_flow_runs(limit=200)]
    return asyncio.run(names())


@pytest.mark.parametrize("text,message", [
    ("models: []\n", "models: expected a non-empty list"),
    ("dataset: {phantoms: {n: 1}}\n", "n at least 2"),
    ("modles: [blind]\n", "unknown key(s) modles"),
    ("models: [{model: blind, batchsize: 3}]\n", "models[0]: unknown key(s) batchsize"),
    ("dataset: {upstream: x, phantoms: {}}\n", "either phantoms or upstream"),
    ("judges: 3\n", "judges: expected a list"),
    ("models: [nope]\n", "models[0]: unknown model 'nope'; known models:"),
    ("models: [{model: blind, limit_volumes: -1}]\n", "models[0].limit_volumes: expected a whole number of at least 1"),
    ("models: [{model: blind, limit_volumes: 2.5}]\n", "models[0].limit_volumes: expected a whole number"),
    # the whole file is checked before any work (each of these failed after the pipeline ran, or ran wrong)
    ("", "the file is empty"),
    ("dataset: {phantoms: {n: 2.7}}\n", "dataset.phantoms.n: expected a whole number, n at least 2, not 2.7"),
    ("dataset: {phantoms: {seed: x}}\n", "dataset.phantoms.seed: Input should be a valid integer, not 'x'"),
    ("models: [{model: blind, batch_size: abc}]\n", "models[0].batch_size: expected a whole number of at least 1, "
                                                    "not 'abc'"),
    ("models: [{model: blind, batch_size: 0}]\n", "models[0].batch_size: expected a whole number of at least 1, not 0"),
    ("models: [{model: blind, options: notadict}]\n", "models[0].options: expected a mapping of option: value, "
                                                      "not 'notadict'"),
    ("models: [{model: blind, dtype: float64}]\n", "models[0].dtype: expected 'float32', 'bfloat16' or 'float16', "
                                                   "not 'float64'"),
    ("models: [{model: blind, name: 5}]\n", "models[0].name: Input should be a valid string, not 5"),
    ("models: [{model: blind, ablate: flip}]\n", "models[0].ablate: expected 'shuffle-volumes', not 'flip'"),
    ("models: [{model: random, options: {temperature: abc}}]\n",
     "models[0].options: random: unknown option(s) temperature; known: none (it takes no --option)"),
    ("models: [{model: blind, device: tpu}]\n", "models[0].device: 'tpu' is not a device; use cpu, cuda, cuda:N or mps"),
    ("judges: [nosuchpreset]\n", "judges[0]: 'nosuchpreset' is neither a judges file nor a preset"),
    ("judges: [missing/judges.yaml]\n", "judges[0]: "),
])
def test_bad_config_is_one_clear_error(tmp_path, capsys, text, message, monkeypatch):
    monkeypatch.setenv("CTSVQA_DB", str(tmp_path / "wh.duckdb"))
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(cfg)
    assert main(["benchmark", "--config", str(cfg), "--db", str(tmp_path / "wh.duckdb")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and str(cfg) in err[0]
    assert not (tmp_path / "wh.duckdb").exists()


def test_ctrl_c_of_the_benchmark_stops_after_the_stage_in_hand_and_the_same_command_continues(
        prefect_server, tmp_path):
    import os
    import re
    import signal
    import subprocess
    import sys
    import time

    from prefect.settings import PREFECT_API_URL

    from tests.conftest import REPO, cli_env, echo_plugin

    site = echo_plugin(tmp_path / "site")
    cfg = tmp_path / "bench.yaml"
    cfg.write_text("dataset:\n  phantoms: {n: 3, seed: 5, size: small}\nmodels: [echo-test, blind]\njudges: [offline]\n")
    db, out, log_file = tmp_path / "wh.duckdb", tmp_path / "out", tmp_path / "answered.log"
    env = cli_env(ECHO_TEST_DELAY="0.4", ECHO_TEST_LOG=str(log_file), PREFECT_API_URL=PREFECT_API_URL.value(),
                  PYTHONPATH=os.pathsep.join([str(REPO), str(site)]))
    cmd = [sys.executable, "-m", "flows.cli", "benchmark", "--config", str(cfg), "--db", str(db), "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not (log_file.is_file() and log_file.read_text().strip()):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the benchmark ended or stalled before Ctrl-C: {proc.communicate(timeout=10)}")
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    last = err.strip().splitlines()[-1]
    assert re.fullmatch(r"ctsvqa: interrupted in infer echo-test \(left: \d+ answer\(s\)\); what finished is "
                        r"stored: run the same command to continue", last), err
    con = duckdb.connect(str(db), read_only=True)
    try:
        names = {n for (n,) in con.execute("SELECT name FROM runs").fetchall()}
        judged = con.execute("SELECT count(*) FROM judgments").fetchone()[0]
    finally:
        con.close()
    assert names == {"echo-test"} and judged == 0               # no later model, no jury
    assert not (out / "report" / "report.html").exists()
    done = subprocess.run(cmd, cwd=REPO, env={**env, "ECHO_TEST_DELAY": "0"}, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    assert (out / "report" / "report.html").is_file()


def test_an_analysts_lock_during_a_model_stops_the_benchmark_with_the_whole_lock_line(prefect_server, tmp_path):
    """Today's failure: one model failed on the lock and the benchmark went on to judge, report and
    snapshot, printing the old headline. A stage that meets the lock stops the benchmark."""
    import os
    import subprocess
    import sys
    import textwrap

    from prefect.settings import PREFECT_API_URL

    from tests.conftest import REPO, cli_env, echo_plugin

    site = echo_plugin(tmp_path / "site")
    cfg = tmp_path / "bench.yaml"
    cfg.write_text("dataset:\n  phantoms: {n: 3, seed: 5, size: small}\nmodels: [echo-test, blind]\njudges: [offline]\n")
    db, out = tmp_path / "wh.duckdb", tmp_path / "out"
    analyst = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time, duckdb
        while True:                       # wait until the first model has stored something, then hold the file
            try:
                con = duckdb.connect({str(db)!r}, read_only=True)
                n = con.execute("SELECT count(*) FROM predictions").fetchone()[0]
                con.close()
                if n:
                    break
            except duckdb.Error:
                pass
            time.sleep(0.05)
        con = duckdb.connect({str(db)!r})
        print("locked", flush=True)
        time.sleep(4)                     # longer than the benchmark waits (2 s), then the lock is gone
    """)], stdout=subprocess.PIPE, text=True)
    try:
        env = cli_env(ECHO_TEST_DELAY="0.5", CTSVQA_LOCK_TIMEOUT="2", PREFECT_API_URL=PREFECT_API_URL.value(),
                      PYTHONPATH=os.pathsep.join([str(REPO), str(site)]))
        done = subprocess.run([sys.executable, "-m", "flows.cli", "benchmark", "--config", str(cfg), "--db", str(db),
                               "--out", str(out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert analyst.stdout.readline().strip() == "locked"
    finally:
        analyst.kill()
        analyst.wait(10)
    assert done.returncode == 2, done.stdout + done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"ctsvqa: error: warehouse {db} is being written by PID {analyst.pid}"), done.stderr
    assert last.endswith("waited 2s (CTSVQA_LOCK_TIMEOUT). Wait for it to finish (or stop it), then run this again.")
    assert "jury accuracy" not in done.stdout                                      # no stale headline
    assert not (out / "report" / "report.html").exists()
    con = duckdb.connect(str(db), read_only=True)
    try:
        assert {n for (n,) in con.execute("SELECT name FROM runs").fetchall()} == {"echo-test"}
        assert con.execute("SELECT count(*) FROM judgments").fetchone()[0] == 0
    finally:
        con.close()


def test_config_device_cuda_without_cuda_is_refused_before_any_work(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("models: [{model: blind, device: cuda}]\n")
    assert main(["benchmark", "--config", str(cfg), "--db", str(tmp_path / "wh.duckdb")]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert f"{cfg}: models[0].device: cuda: torch" in line and "sees no CUDA GPU" in line and "--device cpu" in line
    assert not (tmp_path / "wh.duckdb").exists()


def test_config_that_is_not_utf8_is_named(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_bytes("models: [blind]  # caf\u00e9\n".encode("latin-1"))
    assert main(["benchmark", "--config", str(cfg), "--db", str(tmp_path / "wh.duckdb")]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == f"ctsvqa: error: {cfg}: not UTF-8 text (byte 22); save the config as UTF-8"


def test_the_benchmark_shows_each_stage_with_rate_and_time_left_in_a_terminal_and_nothing_when_not(
        prefect_server, tmp_path):
    import fcntl
    import os
    import pty
    import re
    import struct
    import subprocess
    import sys
    import termios

    from prefect.settings import PREFECT_API_URL

    from tests.conftest import REPO, cli_env

    cfg = tmp_path / "bench.yaml"
    cfg.write_text("dataset:\n  phantoms: {n: 2, seed: 5, size: small}\nmodels: [phantom-expert, blind]\n"
                   "judges: [offline]\n")
    env = cli_env(PREFECT_API_URL=PREFECT_API_URL.value(), TERM="xterm")
    cmd = [sys.executable, "-m", "flows.cli", "benchmark", "--config", str(cfg), "--db", str(tmp_path / "wh.duckdb"),
           "--out", str(tmp_path / "out")]
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:                     # EIO: the terminal's other end is closed
            break
        if not data:
            break
        chunks.append(data)
    assert proc.wait(600) == 0
    os.close(master)
    screen = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", b"".join(chunks).decode(errors="replace"))
    for stage in ("preprocess (volumes)", "infer phantom-expert (questions)", "infer blind (questions)",
                  "judge exact (judgments)", "judge spatial-rules (judgments)"):
        assert stage in screen, stage
    assert re.search(r"infer blind \(questions\)\s.*\d+/\d+\s+[\d,.]+/s", screen)         # done/total and the rate
    assert "left" in screen and "jury accuracy" in screen

    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)     # not a terminal
    assert again.returncode == 0
    assert "(questions)" not in again.stderr and "(judgments)" not in again.stderr
