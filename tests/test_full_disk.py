"""A disk that fills up under `report --html` and `db snapshot`: one line naming the file, exit 2, and
nothing half-written left behind. The disk is full for real as far as the process can tell: the CLI
runs with a file-size limit (RLIMIT_FSIZE), so its write() fails with EFBIG at that size, as it
fails with ENOSPC on a full disk; the same error path either way."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, cli_env


def _cli(limit_bytes: int, *args: str) -> subprocess.CompletedProcess:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=REPO, env=cli_env(), capture_output=True,
                          text=True, timeout=300, preexec_fn=limit)


def test_report_html_on_a_full_disk_names_the_file_and_leaves_nothing(mini_db, tmp_path):
    out = tmp_path / "report"
    done = _cli(300_000, "report", "--db", str(mini_db), "--html", str(out))      # charts fit, the page does not
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"ctsvqa: error: {out / 'report.html.tmp'}: could not write the report (File too large)")
    assert not out.exists()                                    # the folder it made, and every chart in it


def test_report_html_into_an_existing_folder_keeps_the_folder_and_removes_only_what_it_wrote(mini_db, tmp_path):
    out = tmp_path / "report"
    out.mkdir()
    (out / "mine.txt").write_text("the user's")
    done = _cli(300_000, "report", "--db", str(mini_db), "--html", str(out))
    assert done.returncode == 2
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]


def test_snapshot_on_a_full_disk_is_one_line_and_leaves_no_tmp_or_wal(mini_db, tmp_path):
    snap = tmp_path / "snaps" / "wh.duckdb"
    done = _cli(1_000_000, "db", "snapshot", str(snap), "--db", str(mini_db))
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"ctsvqa: error: could not write the snapshot {snap}: ") and "nothing was left" in line
    assert list(snap.parent.iterdir()) == []


def test_report_on_an_empty_warehouse_says_so_and_makes_no_folder(tmp_path):
    import warehouse

    db = tmp_path / "wh.duckdb"
    with warehouse.writer(db):
        pass                                                   # a migrated warehouse with nothing in it
    for args in (["report"], ["report", "--html", str(tmp_path / "html")]):
        done = _cli(10**9, *args, "--db", str(db))
        assert done.returncode == 2
        (line,) = done.stderr.strip().splitlines()
        assert "is empty: no dataset" in line and "ctsvqa import-upstream" in line, line
    assert not (tmp_path / "html").exists()
