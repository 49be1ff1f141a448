"""The preprocess step end to end on a small upstream-layout dataset with good and bad volumes."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import duckdb
import numpy as np
import pytest

from adapters.datasets.upstream import ct_rate_folder
from adapters.models.recipes import RECIPES, select
from tasks import model_inputs
from tasks.upstream_import import import_upstream
from tests.test_volumes import BAD
from tests.volume_factory import left_lesion_ras, save

GOOD = {"valid_1_a_1.nii.gz": "LPS", "valid_2_a_1.nii.gz": "RAS", "valid_2_a_2.nii.gz": "LAI"}
BROKEN = {"valid_3_a_1.nii.gz": "truncated gzip", "valid_4_a_1.nii.gz": "2-D image",
          "valid_5_a_1.nii.gz": "NaN voxels", "valid_6_a_1.nii.gz": "missing file",
          "valid_7_a_1.nii.gz": "absurd spacing", "valid_8_a_1.nii.gz": "empty volume",
          "valid_9_a_1.nii.gz": "wrong magic", "valid_10_a_1.nii.gz": "4-D image",
          "valid_11_a_1.nii.gz": "intercept applied twice", "valid_12_a_1.nii.gz": "no orientation codes",
          "valid_13_a_1.nii.gz": "complex voxels", "valid_14_a_1.nii.gz": "a directory"}


def make_dataset(root: Path) -> Path:
    names = list(GOOD) + list(BROKEN)
    data = {v: {"qa_pairs": [{"question": "Which side is the lesion on?", "answer": "On the left side."}]}
            for v in names}
    path = root / "dataset/ct_spatialvqa/spatial_qa_filtered_full.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(data))
    good_file = None
    for i, (volume, codes) in enumerate(GOOD.items()):
        target = root / "volumes" / ct_rate_folder(volume) / volume
        good_file = save(target, left_lesion_ras(), codes, stored_offset=1024 * (i % 2))
    for volume, case in BROKEN.items():
        target = root / "volumes" / ct_rate_folder(volume) / volume
        target.parent.mkdir(parents=True, exist_ok=True)
        BAD[case][0](target, good_file)
    return root


@pytest.fixture
def dataset_db(tmp_path):
    root = make_dataset(tmp_path / "ds")
    db = tmp_path / "wh.duckdb"
    import_upstream(root, db)
    return root, db


def run_plain(db, recipes, out_root):
    jobs = model_inputs.plan(db, None, recipes, [], out_root)
    rows = [row for job in jobs for row in model_inputs.process_volume(job, str(out_root))]
    model_inputs.record(db, rows)
    return jobs


def test_every_recipe_for_good_volumes_and_a_reason_for_bad_ones(dataset_db, tmp_path):
    root, db = dataset_db
    out_root = tmp_path / "inputs"
    jobs = run_plain(db, select("all"), out_root)
    assert len(jobs) == len(GOOD) + len(BROKEN)
    con = duckdb.connect(str(db), read_only=True)
    ok = con.execute("SELECT volume, count(*) FROM model_inputs WHERE status = 'ok' GROUP BY volume").fetchall()
    assert dict(ok) == {v: len(RECIPES) for v in GOOD}
    reasons = dict(con.execute("SELECT DISTINCT volume, reason FROM model_inputs WHERE status = 'failed'").fetchall())
    assert set(reasons) == set(BROKEN)
    for volume, case in BROKEN.items():
        assert BAD[case][1] in reasons[volume], (volume, reasons[volume])
    rows = con.execute("SELECT path, shape, dtype, sha256, patient_left, volume_sha256 FROM model_inputs "
                       "WHERE status = 'ok' AND recipe = 'm3d'").fetchall()
    for path, shape, dtype, digest, left, volume_sha in rows:
        assert Path(path).is_file() and Path(path).name == f"{volume_sha}.npy"   # content-addressed
        assert list(np.load(path).shape) == shape == [1, 32, 256, 256] and dtype == "float32"
        assert left == "axis 3, high index"
    con.close()
    assert not list(root.glob("volumes/**/*.nii"))           # no uncompressed sibling left behind


def test_resume_builds_only_what_is_missing(dataset_db, tmp_path):
    root, db = dataset_db
    out_root = tmp_path / "inputs"
    run_plain(db, select("m3d,medgemma"), out_root)
    again = model_inputs.plan(db, None, select("m3d,medgemma"), [], out_root)
    assert {j.volume for j in again} == set(BROKEN)          # failures are tried again, good ones skipped
    con = duckdb.connect(str(db), read_only=True)
    path = con.execute("SELECT path FROM model_inputs WHERE volume = 'valid_2_a_1.nii.gz' AND recipe = 'medgemma'"
                       ).fetchone()[0]
    con.close()
    Path(path).unlink()
    again = {j.volume: j.recipes for j in model_inputs.plan(db, None, select("m3d,medgemma,lingshu"), [], out_root)}
    assert again["valid_2_a_1.nii.gz"] == ("medgemma", "lingshu")
    assert again["valid_1_a_1.nii.gz"] == ("lingshu",)


def test_flow_and_cli(prefect_server, dataset_db, tmp_path, capsys):
    """Failed volumes: the rest is built, each failure listed, exit status 1 with a one-line summary."""
    from flows.cli import main

    root, db = dataset_db
    out = tmp_path / "inputs"
    assert main(["preprocess", "--db", str(db), "--recipes", "m3d,vila-m3", "--out", str(out)]) == 1
    captured = capsys.readouterr()
    printed = captured.out
    assert f"{len(GOOD) + len(BROKEN)} volume(s) processed" in printed
    assert "failed: valid_6_a_1.nii.gz: volume file not found" in printed
    assert "failed: valid_3_a_1.nii.gz: corrupt or truncated gzip" in printed
    assert captured.err.splitlines() == [
        f"ctsvqa: {len(BROKEN)} of {len(GOOD) + len(BROKEN)} volume(s) have no usable input (listed above); "
        "every other input is built"]
    assert main(["preprocess", "--db", str(db), "--recipes", "m3d,vila-m3", "--out", str(out),
                 "--max-cache", "1"]) == 1
    assert f"{len(BROKEN)} volume(s) processed" in capsys.readouterr().out
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT count(*) FROM model_inputs WHERE status = 'ok'").fetchone() == (2 * len(GOOD),)
    con.close()
    assert not list(out.rglob("*.np[yz]"))                   # a 1-byte budget evicts every built input...
    again = {j.volume: j.recipes for j in model_inputs.plan(db, None, select("m3d,vila-m3"), [], out)}
    assert all(again[v] == ("m3d", "vila-m3") for v in GOOD)  # ...and they are planned again


def _import_folder(root: Path, volumes: dict[str, Path], db: Path, dataset: str) -> None:
    """An upstream-layout folder whose volumes are copies of the given files (bytes equal)."""
    data = {v: {"qa_pairs": [{"question": "Which side is the lesion on?", "answer": "Left."}]} for v in volumes}
    path = root / "dataset/ct_spatialvqa/spatial_qa_filtered_full.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(data))
    for volume, source in volumes.items():
        target = root / "volumes" / volume
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(source.read_bytes())
    import_upstream(root, db, dataset)


def test_equal_bytes_and_a_second_dataset_get_their_own_rows(prefect_server, tmp_path):
    """The Prefect cache is keyed by content: a second volume with the same bytes, in another dataset,
    must still get rows of its own (sharing the content-addressed files)."""
    from flows.preprocess import preprocess

    source = save(tmp_path / "src.nii.gz", left_lesion_ras(), "LPS")
    db = tmp_path / "wh.duckdb"
    _import_folder(tmp_path / "a", {"valid_1_a_1.nii.gz": source}, db, "a")
    _import_folder(tmp_path / "b", {"valid_1_a_1.nii.gz": source, "valid_2_a_1.nii.gz": source}, db, "b")
    out = tmp_path / "inputs"
    preprocess(recipes="vila-m3", db=str(db), dataset="a", out=str(out))
    preprocess(recipes="vila-m3", db=str(db), dataset="b", out=str(out))      # every key is cached by now
    con = duckdb.connect(str(db), read_only=True)
    rows = con.execute("SELECT dataset_id, volume, status, path, source_path FROM model_inputs ORDER BY 1, 2").fetchall()
    con.close()
    assert [(d, v, s) for d, v, s, _, _ in rows] == [
        ("a", "valid_1_a_1.nii.gz", "ok"), ("b", "valid_1_a_1.nii.gz", "ok"), ("b", "valid_2_a_1.nii.gz", "ok")]
    assert len({p for _, _, _, p, _ in rows}) == 1                              # one shared file
    assert [Path(sp).parent.parent.name for *_, sp in rows] == ["a", "b", "b"]    # each row names its own source
    assert Path(rows[2][4]).name == "valid_2_a_1.nii.gz"


def test_replaced_volume_is_rebuilt_and_its_rows_updated(dataset_db, tmp_path):
    root, db = dataset_db
    out_root = tmp_path / "inputs"
    run_plain(db, select("vila-m3"), out_root)
    volume = "valid_2_a_1.nii.gz"
    target = root / "volumes" / ct_rate_folder(volume) / volume
    before = target.stat()
    save(target, left_lesion_ras(lesion_hu=300), "RAS")                        # other content, same name
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))
    again = {j.volume: j.recipes for j in model_inputs.plan(db, None, select("vila-m3"), [], out_root)}
    assert again[volume] == ("vila-m3",) and "valid_1_a_1.nii.gz" not in again
    run_plain(db, select("vila-m3"), out_root)
    con = duckdb.connect(str(db), read_only=True)
    sha, path = con.execute("SELECT volume_sha256, path FROM model_inputs WHERE volume = ?", [volume]).fetchone()
    con.close()
    assert sha == hashlib.sha256(target.read_bytes()).hexdigest() and Path(path).name.startswith(sha)
    assert volume not in {j.volume for j in model_inputs.plan(db, None, select("vila-m3"), [], out_root)}


def test_stored_paths_do_not_depend_on_the_working_directory(dataset_db, tmp_path, monkeypatch):
    root, db = dataset_db
    monkeypatch.chdir(tmp_path)
    run_plain(db, select("vila-m3"), Path("relative-inputs"))
    con = duckdb.connect(str(db), read_only=True)
    paths = con.execute("SELECT path, source_path FROM model_inputs WHERE status = 'ok'").fetchall()
    con.close()
    assert paths and all(Path(p).is_absolute() and Path(sp).is_absolute() for p, sp in paths)
    monkeypatch.chdir(root)
    assert {j.volume for j in model_inputs.plan(db, None, select("vila-m3"), [], tmp_path / "relative-inputs")
            } == set(BROKEN)                                                   # nothing rebuilt from elsewhere


def test_bounded_cache_evicts_least_recently_used_and_ensure_inputs_rebuilds(dataset_db, tmp_path):
    from tasks import input_cache

    root, db = dataset_db
    out_root = tmp_path / "inputs"
    recipe = select("m3d")
    run_plain(db, recipe, out_root)
    con = duckdb.connect(str(db), read_only=True)
    stored = dict(con.execute("SELECT volume, path FROM model_inputs WHERE status = 'ok'").fetchall())
    digests = dict(con.execute("SELECT volume, sha256 FROM model_inputs WHERE status = 'ok'").fetchall())
    con.close()
    first, second, third = GOOD
    size = Path(stored[first]).stat().st_size
    for age, volume in enumerate((third, first, second)):         # least recently used: third
        os.utime(stored[volume], (1_000_000 + age, 1_000_000 + age))
    assert input_cache.evict(out_root, int(1.5 * size)) == [Path(stored[third]), Path(stored[first])]
    assert input_cache.usage(out_root) == size
    assert {j.volume for j in model_inputs.plan(db, None, recipe, [], out_root)} == set(BROKEN) | {first, third}

    failures: dict[str, str] = {}
    got = model_inputs.ensure_inputs(db, "ct-spatialvqa", "m3d", [third, first, "valid_3_a_1.nii.gz", "nope.nii.gz"],
                                     out_root, max_cache=int(1.5 * size), failures=failures)
    assert got == {third: Path(stored[third]), first: Path(stored[first])}
    assert all(p.is_file() for p in got.values())                  # what the caller reads is never evicted
    assert not Path(stored[second]).exists()                       # ...the least recently used one is
    for volume, path in got.items():                               # rebuilt byte for byte
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digests[volume]
    assert "corrupt or truncated gzip" in failures["valid_3_a_1.nii.gz"]
    assert failures["nope.nii.gz"] == "not a volume of dataset 'ct-spatialvqa'"
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT count(*) FROM model_inputs WHERE status = 'ok'").fetchone() == (len(GOOD),)
    con.close()


@pytest.mark.parametrize("text, expected", [("50G", 50 * 10**9), ("1.5 GiB", 3 * 2**29), ("800MB", 8 * 10**8),
                                            (1000, 1000), (None, None)])
def test_cache_size(text, expected):
    from tasks.input_cache import parse_size

    assert parse_size(text) == expected


def test_cache_size_refused():
    from tasks.input_cache import parse_size

    with pytest.raises(ValueError, match="'lots' is not a size"):
        parse_size("lots")
