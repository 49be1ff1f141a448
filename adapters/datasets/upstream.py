"""Reader for the upstream CT-SpatialVQA repository layout.

Pure parsing: files in, plain records out, nothing of DuckDB or Prefect. Every record carries the
question id (qid) it belongs to; nothing is ever paired by list position across files. The format
quirks handled here are catalogued in ../shared/research/upstream-formats.md (sections a-c).
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from collections import defaultdict
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Iterator

DATASET_JSON = Path("dataset/ct_spatialvqa/spatial_qa_filtered_full.json")
CATEGORIES_JSON = Path(
    "benchmarking/eval_scripts/spatial_categories/spatial_qa_filtered_full_with_categories.json"
)
PREDICTIONS_DIR = Path("benchmarking/reports/predictions")
LLM_EVAL_DIR = Path("benchmarking/reports/llm_eval")
PREDICTIONS_SUFFIX = "_predictions_full.jsonl"
# Optional manifest a dataset in this layout may carry (the phantom generator writes one).
MANIFEST_JSON = Path("ctsvqa_dataset.json")

CATEGORIES = (
    "Laterality & Bilateral Symmetry",
    "Longitudinal (Vertical) Position",
    "Anterior-Posterior (Depth) Relations",
    "Medial-Lateral Orientation (Centricity)",
    "Adjacency & Containment",
    "Spatial Extent & Boundaries",
)
CATEGORY_ALIASES = {"Medial-Lateral Orientation": "Medial-Lateral Orientation (Centricity)"}


@dataclass(frozen=True)
class UpstreamJudge:
    """One of the three published judges, as far as the upstream record lets us know it."""

    name: str
    file_suffix: str
    provider: str
    model: str
    prompt_version: str
    notes: str

    @property
    def judge_id(self) -> str:
        return f"upstream/{self.name}/{self.model}/{self.prompt_version}"


UPSTREAM_JUDGES = (
    UpstreamJudge(
        "gemini2.5", "_gemini2.5_eval_full.json", "gemini", "gemini-2.5-flash", "upstream-batch5-v1",
        "google.generativeai, temperature not set; m3d/med3dvlm judged with the older prompt that "
        "also asked for 'reasoning'; PARSE_ERROR items were repaired upstream by copying one verdict",
    ),
    UpstreamJudge(
        "gpt", "_gpt_eval.json", "openai", "gpt-4o-mini", "upstream-batch5-v1",
        "temperature 0, max_tokens 512; code and README say gpt-4o-mini, the paper says GPT-4o",
    ),
    UpstreamJudge(
        "qwen", "_qwen_eval.json", "dashscope-compatible", "qwen-plus", "upstream-batch5-v1",
        "OpenAI client against DashScope compatible mode, temperature 0, max_tokens 512",
    ),
)


class UpstreamFormatError(ValueError):
    """A file does not follow the upstream format; the message names the file and the place."""

    def __init__(self, path: Path | str, where: str | None, problem: str):
        self.path, self.where, self.problem = str(path), where, problem
        super().__init__(f"{path}{': ' + where if where else ''}: {problem}")


@dataclass
class Question:
    qid: str
    volume: str
    idx: int
    question: str
    answer: str


@dataclass
class Dataset:
    volumes: list[str]
    questions: list[Question]
    categories: list[tuple[str, str]]          # (qid, category), multi-label
    has_categories: bool
    name: str | None = None                    # from the manifest, if any
    synthetic: bool = False
    description: str | None = None

    def qids_by_key(self) -> dict[tuple[str, str, str], list[str]]:
        """(volume, question, answer) -> qids in dataset order (the key is unique upstream)."""
        index: dict[tuple[str, str, str], list[str]] = defaultdict(list)
        for q in self.questions:
            index[(q.volume, q.question.strip(), q.answer.strip())].append(q.qid)
        return index


@dataclass
class PredictionRow:
    qid: str
    text: str | None
    status: str                                # 'ok' or 'error'
    reason: str | None
    line: int
    image_id: str
    question: str                              # stripped, as in the key
    answer: str
    match_text: str                            # str(prediction), the judges' matching key


@dataclass
class Predictions:
    run: str
    path: Path
    rows: list[PredictionRow]

    @cached_property
    def judge_keys(self) -> tuple[dict[tuple, list[str]], dict[tuple, list[str]]]:
        """qids by the content a judge file repeats: (question, answer, str(prediction)), and the
        same with the image id first, for items that carry a case_id. Built once per run."""
        by_text: dict[tuple, list[str]] = defaultdict(list)
        by_image: dict[tuple, list[str]] = defaultdict(list)
        for row in self.rows:
            by_text[(row.question, row.answer, row.match_text)].append(row.qid)
            by_image[(row.image_id, row.question, row.answer, row.match_text)].append(row.qid)
        return by_text, by_image


@dataclass
class JudgmentRow:
    qid: str
    verdict: bool | None
    status: str                                # 'ok' | 'no_verdict' | 'unparsed'
    reason: str | None
    raw_response: str
    item: int                                  # 0-based position in the eval file


@dataclass
class Judgments:
    run: str
    judge: UpstreamJudge
    path: Path
    rows: list[JudgmentRow]


@dataclass
class Layout:
    root: Path
    dataset: Path
    categories: Path | None
    predictions: dict[str, Path] = field(default_factory=dict)
    judgments: dict[tuple[str, str], Path] = field(default_factory=dict)  # (run, judge name)


def _check_file(path: Path) -> None:
    """Refuse anything but a regular file (following symlinks) before it is opened: a FIFO would
    block the reader forever, a directory or a symlink loop deserves its own name, not 'missing'."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UpstreamFormatError(path, None, "symlink loop; point it at the real file") from None
        if e.errno == errno.ENOENT and os.path.islink(path):
            raise UpstreamFormatError(path, None, f"broken symlink to {os.readlink(path)!r}") from None
        raise UpstreamFormatError(path, None, f"cannot read ({e.strerror})") from None
    if stat.S_ISREG(mode):
        return
    kind = {stat.S_IFDIR: "a directory", stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket",
            stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device"}.get(stat.S_IFMT(mode), "not a file")
    raise UpstreamFormatError(path, None, f"is {kind}, expected a file")


def _present(path: Path) -> bool:
    """There is something at the path (a dangling or looping symlink counts, so it can be named)."""
    return os.path.lexists(path)


def discover(root: Path | str) -> Layout:
    """Find the files of an upstream clone; only the dataset JSON is required."""
    root = Path(root)
    dataset = root / DATASET_JSON
    if not _present(dataset):
        raise UpstreamFormatError(root, None, f"not an upstream CT-SpatialVQA layout: {DATASET_JSON} is missing")
    _check_file(dataset)
    categories = root / CATEGORIES_JSON
    if _present(categories):
        _check_file(categories)
    layout = Layout(root, dataset, categories if _present(categories) else None)
    pred_dir = root / PREDICTIONS_DIR
    if pred_dir.is_dir():
        for p in sorted(pred_dir.glob(f"*{PREDICTIONS_SUFFIX}")):
            _check_file(p)
            layout.predictions[p.name[: -len(PREDICTIONS_SUFFIX)]] = p
    eval_dir = root / LLM_EVAL_DIR
    if eval_dir.is_dir():
        for p in sorted(eval_dir.iterdir()):
            for judge in UPSTREAM_JUDGES:
                if p.name.endswith(judge.file_suffix):
                    run = p.name[: -len(judge.file_suffix)]
                    if run not in layout.predictions:
                        raise UpstreamFormatError(
                            p, None, f"judge file for run {run!r} but no {run}{PREDICTIONS_SUFFIX} in {PREDICTIONS_DIR}"
                        )
                    _check_file(p)
                    layout.judgments[(run, judge.name)] = p
    return layout


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    """json's object_pairs_hook: a repeated key would silently keep only its last value (a volume
    listed twice lost its first questions), so it is an error."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return obj


def _parse_json(raw: bytes, path: Path, where: str | None) -> Any:
    """One JSON document; every way it can be wrong becomes an UpstreamFormatError."""
    try:
        return json.loads(raw, object_pairs_hook=_unique_keys)
    except _DuplicateKey as e:
        raise UpstreamFormatError(path, where, f"key {e.args[0]!r} appears twice in one JSON object; "
                                               "keep one (json.load would silently drop the first)") from None
    except json.JSONDecodeError as e:
        # e.msg can end in "at" ("Invalid control character at"): the column completes it
        at = f" column {e.colno}" if e.msg.endswith(" at") else f" (column {e.colno})"
        raise UpstreamFormatError(path, where or f"line {e.lineno}", f"invalid JSON: {e.msg}{at}") from None
    except UnicodeDecodeError as e:
        raise UpstreamFormatError(path, where or f"byte {e.start}", "not UTF-8 text") from None
    except RecursionError:
        raise UpstreamFormatError(path, where, "JSON nested too deeply to be a data file") from None


def _read_bytes(path: Path) -> bytes:
    _check_file(path)
    try:
        return path.read_bytes()
    except OSError as e:
        raise UpstreamFormatError(path, None, f"cannot read ({e.strerror}); check the file's permissions") from None


def _load_json(path: Path) -> Any:
    return _parse_json(_read_bytes(path), path, None)


def _iter_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    for lineno, raw in enumerate(_read_bytes(path).splitlines(), start=1):
        if raw.strip():
            yield lineno, _parse_json(raw, path, f"line {lineno}")


def _text_field(obj: Any, key: str, path: Path, where: str, non_empty: bool = False) -> str:
    if not isinstance(obj, dict):
        raise UpstreamFormatError(path, where, f"expected a JSON object, got {type(obj).__name__}")
    value = obj.get(key)
    if not isinstance(value, str):
        raise UpstreamFormatError(path, where, f"field {key!r} must be a string, got {value!r}")
    if non_empty and not value.strip():
        raise UpstreamFormatError(path, where, f"empty {key}; fill it in or remove the QA pair")
    return value


# A volume key is a plain file name (CT-RATE's valid_12_a_1.nii.gz, or a lab's own scan name): it is
# joined to the volumes folder, so a separator, a leading dot or a drive would reach outside it.
VOLUME_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


def check_volume_name(volume: str, path: Path | str, where: str | None = None) -> str:
    if not isinstance(volume, str) or not VOLUME_NAME.fullmatch(volume) or len(volume) > 255:
        raise UpstreamFormatError(path, where or f"volume {volume!r}",
                                  "a volume key must be a plain file name such as valid_12_a_1.nii.gz (letters, "
                                  "digits, . _ + -; no folder, no leading dot or separator)")
    return volume


def _qa_pairs(data: Any, path: Path) -> Iterator[tuple[str, int, dict]]:
    if not isinstance(data, dict):
        raise UpstreamFormatError(path, None, "expected an object of {volume: {'qa_pairs': [...]}}")
    for volume, entry in data.items():
        check_volume_name(volume, path)
        pairs = entry.get("qa_pairs") if isinstance(entry, dict) else None
        if not isinstance(pairs, list):
            raise UpstreamFormatError(path, f"volume {volume!r}", "missing 'qa_pairs' list")
        for i, qa in enumerate(pairs):
            yield volume, i, qa


def read_dataset(layout: Layout) -> Dataset:
    path = layout.dataset
    data = _load_json(path)
    volumes: list[str] = list(data) if isinstance(data, dict) else []
    questions = []
    for volume, i, qa in _qa_pairs(data, path):
        where = f"volume {volume!r} qa_pairs[{i}]"
        questions.append(
            Question(f"{volume}::{i}", volume, i, _text_field(qa, "question", path, where, non_empty=True),
                     _text_field(qa, "answer", path, where, non_empty=True))
        )
    dataset = Dataset(volumes, questions, [], has_categories=False)
    if layout.categories is not None:
        dataset.categories = read_categories(layout.categories, questions)
        dataset.has_categories = True
    manifest = layout.root / MANIFEST_JSON
    if _present(manifest):
        dataset.name, dataset.synthetic, dataset.description = read_manifest(manifest)
    return dataset


def read_manifest(path: Path) -> tuple[str | None, bool, str | None]:
    """(name, synthetic, description) of the optional dataset manifest."""
    meta = _load_json(path)
    if not isinstance(meta, dict):
        raise UpstreamFormatError(path, None, f"expected a JSON object, got {type(meta).__name__}")
    name, synthetic, description = meta.get("name"), meta.get("synthetic", False), meta.get("description")
    if name is not None and not (isinstance(name, str) and name.strip()):
        raise UpstreamFormatError(path, None, f"field 'name' must be a non-empty string, got {name!r}")
    if not isinstance(synthetic, bool):
        raise UpstreamFormatError(path, None, f"field 'synthetic' must be true or false, got {synthetic!r}")
    if description is not None and not isinstance(description, str):
        raise UpstreamFormatError(path, None, f"field 'description' must be a string, got {description!r}")
    return name, synthetic, description


def read_categories(path: Path, questions: list[Question]) -> list[tuple[str, str]]:
    """Labels are attached by position, so the file must list exactly the dataset's QAs in order."""
    expected = {q.qid: q for q in questions}
    seen = 0
    out: list[tuple[str, str]] = []
    for volume, i, qa in _qa_pairs(_load_json(path), path):
        where = f"volume {volume!r} qa_pairs[{i}]"
        q = expected.get(f"{volume}::{i}")
        if q is None or _text_field(qa, "question", path, where) != q.question or qa.get("answer") != q.answer:
            raise UpstreamFormatError(path, where, "question/answer differ from the dataset file at this position")
        seen += 1
        labels = qa.get("category", [])
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise UpstreamFormatError(path, where, f"'category' must be a list of strings, got {labels!r}")
        for label in dict.fromkeys(CATEGORY_ALIASES.get(x, x) for x in labels):
            if label not in CATEGORIES:
                raise UpstreamFormatError(path, where, f"unknown category {label!r}; expected one of {list(CATEGORIES)}")
            out.append((q.qid, label))
    if seen != len(questions):
        raise UpstreamFormatError(path, None, f"has {seen} QA pairs, the dataset has {len(questions)}")
    return out


def ct_rate_folder(volume: str) -> Path:
    """Where CT-RATE keeps a volume: valid_12_a_1.nii.gz -> valid_12/valid_12_a."""
    parts = volume.split(".")[0].split("_")
    if len(parts) >= 4:
        return Path("_".join(parts[:2])) / "_".join(parts[:3])
    return Path(".")


def image_id(raw: str) -> str:
    """Basename of a case id or image path, as the volume's .nii.gz file name."""
    name = raw.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    if name.endswith(".nii.gz"):
        return name
    if name.endswith((".npy", ".npz")):
        return name[:-4] + ".nii.gz"
    return name + ".nii.gz"


def read_predictions(run: str, path: Path, qids_by_key: dict[tuple[str, str, str], list[str]]) -> Predictions:
    """Map every row to its qid: key (image id, question, answer); the n-th row with a key takes
    the n-th qid with that key in dataset order. A row that matches nothing is an error."""
    taken: dict[tuple[str, str, str], int] = defaultdict(int)
    rows = []
    for lineno, rec in _iter_jsonl(path):
        where = f"line {lineno}"
        question = _text_field(rec, "question", path, where).strip()
        answer = _text_field(rec, "answer", path, where).strip()
        source = rec.get("case_id") or rec.get("image_path")
        if not source or not isinstance(source, str):
            raise UpstreamFormatError(path, where, "row has neither 'case_id' nor 'image_path'")
        key = (image_id(source), question, answer)
        candidates = qids_by_key.get(key)
        if not candidates:
            raise UpstreamFormatError(
                path, where, f"no dataset question matches image {key[0]!r}, question {question!r}, answer {answer!r}"
            )
        n = taken[key]
        if n >= len(candidates):
            raise UpstreamFormatError(
                path, where, f"duplicate row: all {len(candidates)} question(s) with this key already have a prediction"
            )
        taken[key] += 1
        value = rec.get("prediction")
        if value is None:
            text, status, reason = None, "error", "prediction missing or null in the source row"
        else:
            text, status, reason = (value if isinstance(value, str) else json.dumps(value)), "ok", None
        rows.append(PredictionRow(candidates[n], text, status, reason, lineno, key[0], question, answer, str(value)))
    return Predictions(run, path, rows)


def _eval_items(data: Any, path: Path) -> tuple[list, str]:
    if isinstance(data, list):
        return data, "is_correct"
    if isinstance(data, dict) and isinstance(data.get("jury"), list):
        return data["jury"], "jury_is_correct"
    if isinstance(data, dict) and isinstance(data.get("items"), list):
        return data["items"], "is_correct"
    raise UpstreamFormatError(path, None, "expected a JSON list of items, or an object with a 'jury' or 'items' list")


def _verdict(item: dict, key: str) -> tuple[bool | None, str, str | None]:
    reasoning = item.get("reasoning")
    if key not in item:
        return None, "no_verdict", f"{key!r} missing"
    value = item[key]
    if isinstance(reasoning, str) and reasoning.startswith("PARSE_ERROR"):
        # fix_gemini_parse_errors.py copied the first verdict of a failed batch reply to all items.
        return None, "unparsed", f"judge reply did not parse; upstream copied a batch verdict ({value!r}) onto this item"
    if isinstance(value, bool):
        return value, "ok", None
    why = f"{key!r} is {json.dumps(value)}, not a JSON boolean"
    if isinstance(reasoning, str) and reasoning:
        why += f"; upstream reasoning: {reasoning[:200]}"
    return None, "no_verdict", why


def read_judgments(judge: UpstreamJudge, path: Path, predictions: Predictions) -> Judgments:
    """Match each judge item to a prediction of the same run by content, never by position: key
    (question, answer, str(prediction)) plus the image id when the item has a case_id; the n-th
    item with a key takes the n-th prediction row with that key."""
    by_text, by_image = predictions.judge_keys
    taken: dict[tuple, int] = defaultdict(int)
    items, verdict_key = _eval_items(_load_json(path), path)
    rows = []
    for n_item, item in enumerate(items):
        where = f"item {n_item}"
        question = _text_field(item, "question", path, where).strip()
        answer = _text_field(item, "answer", path, where).strip()
        case_id = item.get("case_id")
        if case_id:
            key: tuple = (image_id(str(case_id)), question, answer, str(item.get("prediction")))
            index = by_image
        else:
            key = (question, answer, str(item.get("prediction")))
            index = by_text
        candidates = index.get(key, [])
        n = taken[key]
        if n >= len(candidates):
            problem = (
                f"no prediction of run {predictions.run!r} matches question {question!r}, "
                f"prediction {str(item.get('prediction'))[:80]!r}" + (f", case {case_id!r}" if case_id else "")
            )
            if candidates:
                problem = f"more judge items than predictions ({len(candidates)}) with this content: " + problem
            raise UpstreamFormatError(path, where, problem)
        taken[key] += 1
        verdict, status, reason = _verdict(item, verdict_key)
        raw = {k: item[k] for k in (verdict_key, "reasoning") if k in item}
        rows.append(JudgmentRow(candidates[n], verdict, status, reason, json.dumps(raw, ensure_ascii=False), n_item))
    return Judgments(predictions.run, judge, path, rows)

