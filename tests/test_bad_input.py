"""Malformed upstream files fail with an error naming the file and the line or item, and leave the
warehouse exactly as it was."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from adapters.datasets.upstream import UpstreamFormatError
from tasks.upstream_import import import_upstream
from tests.conftest import REPO, table_digest

PRED = "benchmarking/reports/predictions/{}_predictions_full.jsonl"
EVAL = "benchmarking/reports/llm_eval/{}"
DATASET = "dataset/ct_spatialvqa/spatial_qa_filtered_full.json"
CATS = "benchmarking/eval_scripts/spatial_categories/spatial_qa_filtered_full_with_categories.json"


def edit_jsonl_line(path: Path, lineno: int, fn) -> None:
    lines = path.read_text().splitlines()
    lines[lineno - 1] = fn(lines[lineno - 1])
    path.write_text("\n".join(lines) + "\n")


def edit_json(path: Path, fn) -> None:
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data, indent=2))


def _bad_json_line(root):
    edit_jsonl_line(root / PRED.format("m3d"), 3, lambda s: s[:-5])


def _unknown_question(root):
    edit_jsonl_line(root / PRED.format("merlin"), 2, lambda s: s.replace("Which side is the nodule on?",
                                                                         "Which side is the tumour on?"))


def _duplicate_row(root):
    path = root / PRED.format("radfm")
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines + [lines[3]]) + "\n")


def _row_without_image(root):
    edit_jsonl_line(root / PRED.format("m3d"), 4, lambda s: json.dumps(
        {k: v for k, v in json.loads(s).items() if k != "image_path"}))


def _row_without_question(root):
    edit_jsonl_line(root / PRED.format("m3d"), 5, lambda s: json.dumps(
        {k: v for k, v in json.loads(s).items() if k != "question"}))


def _judge_item_without_prediction(root):
    edit_json(root / EVAL.format("m3d_gpt_eval.json"), lambda d: d[5].update(prediction="Anterior"))


def _truncated_judge_file(root):
    path = root / EVAL.format("radfm_qwen_eval.json")
    path.write_text(path.read_text()[:700])


def _judge_file_wrong_shape(root):
    (root / EVAL.format("radfm_gpt_eval.json")).write_text(json.dumps({"results": []}))


def _more_items_than_predictions(root):
    edit_json(root / EVAL.format("merlin_qwen_eval.json"), lambda d: d.append(dict(d[0])))


def _judge_file_for_unknown_model(root):
    (root / EVAL.format("ctchat_gpt_eval.json")).write_text("[]")


def _unknown_category(root):
    edit_json(root / CATS, lambda d: d["valid_2_a_1.nii.gz"]["qa_pairs"][1].update(category=["Rotation"]))


def _categories_out_of_step(root):
    edit_json(root / CATS, lambda d: d["valid_1_a_1.nii.gz"]["qa_pairs"].reverse())


def _dataset_pair_without_answer(root):
    edit_json(root / DATASET, lambda d: d["valid_2_a_2.nii.gz"]["qa_pairs"][1].pop("answer"))


CASES = [
    (_bad_json_line, "m3d_predictions_full.jsonl: line 3: invalid JSON"),
    (_unknown_question, "merlin_predictions_full.jsonl: line 2: no dataset question matches"),
    (_duplicate_row, "radfm_predictions_full.jsonl: line 9: duplicate row"),
    (_row_without_image, "m3d_predictions_full.jsonl: line 4: row has neither 'case_id' nor 'image_path'"),
    (_row_without_question, "m3d_predictions_full.jsonl: line 5: field 'question' must be a string"),
    (_judge_item_without_prediction, "m3d_gpt_eval.json: item 5: no prediction of run 'm3d' matches"),
    (_truncated_judge_file, "radfm_qwen_eval.json: line "),
    (_judge_file_wrong_shape, "radfm_gpt_eval.json: expected a JSON list"),
    (_more_items_than_predictions, "merlin_qwen_eval.json: item 7: more judge items than predictions"),
    (_judge_file_for_unknown_model, "ctchat_gpt_eval.json: judge file for run 'ctchat' but no"),
    (_unknown_category, "volume 'valid_2_a_1.nii.gz' qa_pairs[1]: unknown category 'Rotation'"),
    (_categories_out_of_step, "volume 'valid_1_a_1.nii.gz' qa_pairs[0]: question/answer differ"),
    (_dataset_pair_without_answer, "volume 'valid_2_a_2.nii.gz' qa_pairs[1]: field 'answer' must be a string"),
]




def test_bad_file_into_a_new_warehouse_writes_nothing(mini_copy, db):
    _unknown_question(mini_copy)
    with pytest.raises(UpstreamFormatError):
        import_upstream(mini_copy, db)
    assert not db.exists()


def test_not_an_upstream_layout(tmp_path, db):
    with pytest.raises(UpstreamFormatError, match="spatial_qa_filtered_full.json is missing"):
        import_upstream(tmp_path, db)


def test_null_prediction_is_a_failed_prediction_not_an_error(mini_copy, db):
    """A row whose prediction is null is recorded as a failure with its reason; the jury ignores it."""
    edit_jsonl_line(mini_copy / PRED.format("radfm"), 8, lambda s: json.dumps({**json.loads(s), "prediction": None}))
    edit_json(mini_copy / EVAL.format("radfm_gpt_eval.json"), lambda d: d["items"][7].update(prediction=None))
    edit_json(mini_copy / EVAL.format("radfm_qwen_eval.json"), lambda d: d["jury"][7].update(prediction=None))
    edit_json(mini_copy / EVAL.format("radfm_gemini2.5_eval_full.json"), lambda d: d[7].update(prediction=None))
    import_upstream(mini_copy, db)
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT status, text, reason FROM predictions WHERE run_id LIKE '%radfm' "
                       "AND qid = 'valid_2_a_2.nii.gz::1'").fetchone() == (
        "error", None, "prediction missing or null in the source row")
    assert con.execute("SELECT n_predictions, n_failed_predictions, coverage FROM model_accuracy "
                       "WHERE model = 'radfm'").fetchone() == (7, 1, 7 / 8)
    # the judges' items for it (prediction None, as upstream's str(None)) still match by content
    assert con.execute("SELECT count(*) FROM judgments WHERE run_id LIKE '%radfm' "
                       "AND qid = 'valid_2_a_2.nii.gz::1'").fetchone() == (3,)
    assert con.execute("SELECT count(*) FROM jury_verdicts WHERE model = 'radfm'").fetchone() == (7,)
    con.close()


# --- files that are not what they claim, or that no parser should accept silently -----------------

MANIFEST = "ctsvqa_dataset.json"


def _manifest_is_a_list(root):
    (root / MANIFEST).write_text("[]")


def _manifest_numeric_name(root):
    (root / MANIFEST).write_text(json.dumps({"name": 5}))


def _dataset_nested_too_deep(root):
    (root / DATASET).write_text("[" * 100_000 + "]" * 100_000)


def _judge_file_nested_too_deep(root):
    (root / EVAL.format("m3d_gpt_eval.json")).write_text('{"items": ' + "[" * 100_000 + "]" * 100_000 + "}")


def _prediction_line_nested_too_deep(root):
    edit_jsonl_line(root / PRED.format("m3d"), 2, lambda s: "[" * 100_000 + "]" * 100_000)


def _dataset_symlink_loop(root):
    path = root / DATASET
    path.unlink()
    path.symlink_to(path.name)


def _dataset_is_a_directory(root):
    path = root / DATASET
    path.unlink()
    path.mkdir()


def _predictions_are_a_fifo(root):
    path = root / PRED.format("merlin")
    path.unlink()
    os.mkfifo(path)


def _categories_are_a_directory(root):
    path = root / CATS
    path.unlink()
    path.mkdir()


def _duplicate_volume_key(root):
    path = root / DATASET
    data = json.loads(path.read_text())
    first = next(iter(data))
    # the same volume again with other questions: json.load would keep only the last one
    dup = json.dumps({first: {"qa_pairs": [{"question": "Is it there?", "answer": "Yes."}]}})[1:-1]
    path.write_text("{" + dup + ", " + json.dumps(data)[1:])


def _empty_question(root):
    edit_json(root / DATASET, lambda d: d["valid_2_a_1.nii.gz"]["qa_pairs"][0].update(question="  "))


def _empty_answer(root):
    edit_json(root / DATASET, lambda d: d["valid_1_a_1.nii.gz"]["qa_pairs"][2].update(answer=""))


def _volume_key(name):
    def rename(root):
        path = root / DATASET
        data = json.loads(path.read_text())
        path.write_text(json.dumps({(name if k == "valid_2_a_1.nii.gz" else k): v for k, v in data.items()}))
    rename.__name__ = f"_volume_key_{name.strip('/').split('/')[-1]}_{'abs' if name.startswith('/') else 'rel'}"
    return rename


def _control_character_in_a_line(root):
    edit_jsonl_line(root / PRED.format("m3d"), 2, lambda s: s.replace('"prediction": "', '"prediction": "\x01', 1))


HOSTILE = [
    # the message used to end "Invalid control character at", the position cut off
    (_control_character_in_a_line, "m3d_predictions_full.jsonl: line 2: invalid JSON: Invalid control character "
                                   "at column 161"),
    (_volume_key("../../etc/passwd.nii.gz"), "volume '../../etc/passwd.nii.gz': a volume key must be a plain file name"),
    (_volume_key("/etc/passwd.nii.gz"), "volume '/etc/passwd.nii.gz': a volume key must be a plain file name"),
    (_volume_key(".hidden.nii.gz"), "volume '.hidden.nii.gz': a volume key must be a plain file name"),
    (_manifest_is_a_list, "ctsvqa_dataset.json: expected a JSON object"),
    (_manifest_numeric_name, "ctsvqa_dataset.json: field 'name' must be a non-empty string, got 5"),
    (_dataset_nested_too_deep, "spatial_qa_filtered_full.json: JSON nested too deeply"),
    (_judge_file_nested_too_deep, "m3d_gpt_eval.json: JSON nested too deeply"),
    (_prediction_line_nested_too_deep, "m3d_predictions_full.jsonl: line 2: JSON nested too deeply"),
    (_dataset_symlink_loop, "spatial_qa_filtered_full.json: symlink loop"),
    (_dataset_is_a_directory, "spatial_qa_filtered_full.json: is a directory, expected a file"),
    (_predictions_are_a_fifo, "merlin_predictions_full.jsonl: is a FIFO, expected a file"),
    (_categories_are_a_directory, "spatial_qa_filtered_full_with_categories.json: is a directory, expected a file"),
    (_duplicate_volume_key, "spatial_qa_filtered_full.json: key 'valid_1_a_1.nii.gz' appears twice"),
    (_empty_question, "volume 'valid_2_a_1.nii.gz' qa_pairs[0]: empty question"),
    (_empty_answer, "volume 'valid_1_a_1.nii.gz' qa_pairs[2]: empty answer"),
]


@pytest.mark.parametrize("corrupt, message", CASES + HOSTILE, ids=[c[0].__name__.strip("_") for c in CASES + HOSTILE])
def test_bad_file_is_refused_by_name_in_one_line_and_changes_nothing(mini_copy, db, corrupt, message):
    import_upstream(mini_copy, db)
    before = table_digest(db)
    corrupt(mini_copy)
    with pytest.raises(UpstreamFormatError) as err:
        import_upstream(mini_copy, db)
    assert message in str(err.value)
    assert "\n" not in str(err.value)
    assert table_digest(db) == before


_READ_AS_NOBODY = """
import sys
from adapters.datasets.upstream import UpstreamFormatError
from tasks.upstream_import import import_upstream
try:
    import_upstream(sys.argv[1], sys.argv[2])
except UpstreamFormatError as exc:
    print(exc)
"""


def test_unreadable_file_is_named(mini_copy, tmp_path):
    """PermissionError. Root reads a mode-000 file, so as root the parser runs as `nobody` (skipped
    where `nobody` cannot run this interpreter); the next test fails a read as root too."""
    target = mini_copy / PRED.format("radfm")
    target.chmod(0)
    if os.geteuid() != 0:
        with pytest.raises(UpstreamFormatError) as err:
            import_upstream(mini_copy, tmp_path / "wh.duckdb")
        message = str(err.value)
    else:
        os.chmod(tmp_path, 0o777)
        try:
            done = subprocess.run([sys.executable, "-c", _READ_AS_NOBODY, str(mini_copy), str(tmp_path / "wh.duckdb")],
                                  cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
                                  text=True, timeout=120, user=65534, group=65534)
        except PermissionError:
            pytest.skip("user nobody cannot run this interpreter here")
        message = done.stdout.strip()
    assert "radfm_predictions_full.jsonl: cannot read (Permission denied)" in message, message


def test_file_whose_read_fails_is_named_not_missing(mini_copy, db):
    """A read that fails even as root: /proc/self/mem is a regular file whose offset 0 gives EIO."""
    target = mini_copy / EVAL.format("radfm_gpt_eval.json")
    target.unlink()
    target.symlink_to("/proc/self/mem")
    with pytest.raises(UpstreamFormatError) as err:
        import_upstream(mini_copy, db)
    assert "radfm_gpt_eval.json: cannot read (Input/output error)" in str(err.value)
    assert not db.exists()


# --- the command line: one line on stderr, exit status 2, traceback only in the Prefect log / --debug ---

def run_cli(*args: str) -> subprocess.CompletedProcess:
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "PREFECT_API_URL": PREFECT_API_URL.value(), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)


def test_cli_failing_import_prints_one_line_and_exits_2(prefect_server, mini_copy, db):
    _dataset_pair_without_answer(mini_copy)
    done = run_cli("import-upstream", str(mini_copy), "--db", str(db))
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        f"ctsvqa: error: {mini_copy / DATASET}: volume 'valid_2_a_2.nii.gz' qa_pairs[1]: "
        "field 'answer' must be a string, got None"], done.stderr
    assert done.stdout == ""


def test_cli_failing_preprocess_prints_one_line_and_exits_2(prefect_server, mini_db):
    done = run_cli("preprocess", "--db", str(mini_db), "--dataset", "nope", "--recipes", "m3d")
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ctsvqa: error: unknown dataset 'nope'"), done.stderr


def test_cli_debug_shows_the_traceback(prefect_server, mini_copy, db):
    _empty_answer(mini_copy)
    done = run_cli("import-upstream", str(mini_copy), "--db", str(db), "--debug")
    assert done.returncode == 2
    assert "Traceback (most recent call last)" in done.stderr
    assert done.stderr.rstrip().splitlines()[-1].startswith("ctsvqa: error: ")


def test_cli_os_error_is_one_line_naming_the_path(tmp_path, capsys):
    from flows.cli import main

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["phantoms", "--out", str(blocker / "ph"), "--n", "1"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"ctsvqa: error: {blocker / 'ph'}") and err[0].endswith(
        ": Not a directory"), err


@pytest.mark.parametrize("limit", ["0", "-1"])
def test_infer_limit_volumes_below_one_is_refused_not_nothing_to_do(mini_db, capsys, limit):
    """`--limit-volumes 0` / `-1` used to say "every prediction stored; nothing to do" (exit 0) and store
    nothing: refused in one line, before any work, and the warehouse has no run for it."""
    import duckdb

    from flows.cli import main

    assert main(["infer", "--model", "random", "--limit-volumes", limit, "--db", str(mini_db)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--limit-volumes must be a whole number of at least 1, not {limit}" in err[0], err
    with duckdb.connect(str(mini_db), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM runs WHERE source = 'inference'").fetchone() == (0,)


def test_a_stored_volume_name_outside_its_root_finds_nothing(tmp_path):
    """A warehouse imported before volume keys were checked: the pipeline still opens nothing outside
    the volumes folder, however the name climbs."""
    from tasks.model_inputs import find_volume

    root = tmp_path / "vols"
    (root / "volumes").mkdir(parents=True)
    outside = tmp_path / "secret.nii.gz"
    outside.write_bytes(b"x")
    (root / "volumes" / "ok.nii.gz").write_bytes(b"x")
    assert find_volume("../../secret.nii.gz", [root]) is None
    assert find_volume(str(outside), [root]) is None
    assert find_volume("ok.nii.gz", [root]) == root / "volumes" / "ok.nii.gz"


@pytest.mark.parametrize("argv, message", [
    (["--device", "tpu"], "--device 'tpu' is not a device; use cpu, cuda, cuda:N or mps"),
    (["--option", "temperature=abc"], "random: unknown option(s) temperature; known: none (it takes no --option)"),
])
def test_infer_unknown_device_or_option_is_refused_before_any_work(mini_db, capsys, argv, message):
    from flows.cli import main

    assert main(["infer", "--model", "random", *argv, "--db", str(mini_db)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == f"ctsvqa: error: {message}"
    import duckdb

    con = duckdb.connect(str(mini_db), read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM runs WHERE name = 'random'").fetchone()[0] == 0
    finally:
        con.close()


def test_infer_device_cuda_without_cuda_is_refused_not_run_on_the_cpu(mini_db, capsys):
    """It used to run on the CPU and record `cuda` in the provenance."""
    import torch

    from flows.cli import main

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["infer", "--model", "random", "--device", "cuda", "--db", str(mini_db)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("ctsvqa: error: --device cuda: torch ") and "sees no CUDA GPU" in line
