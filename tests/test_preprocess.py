"""The preprocess step end to end on a small upstream-layout dataset with good and bad volumes."""

from __future__ import annotations

import json
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
          "valid_9_a_1.nii.gz": "wrong magic", "valid_10_a_1.nii.gz": "4-D image"}


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
    from flows.cli import main

    root, db = dataset_db
    out = tmp_path / "inputs"
    assert main(["preprocess", "--db", str(db), "--recipes", "m3d,vila-m3", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"{len(GOOD) + len(BROKEN)} volume(s) processed" in printed
    assert "failed: valid_6_a_1.nii.gz: volume file not found" in printed
    assert "failed: valid_3_a_1.nii.gz: corrupt or truncated gzip" in printed
    assert main(["preprocess", "--db", str(db), "--recipes", "m3d,vila-m3", "--out", str(out)]) == 0
    assert f"{len(BROKEN)} volume(s) processed" in capsys.readouterr().out
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT count(*) FROM model_inputs WHERE status = 'ok'").fetchone() == (2 * len(GOOD),)
    con.close()
