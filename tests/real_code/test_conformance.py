"""The six remote-code models against their REAL repositories, in their family environments.

For each family: a tiny checkpoint built from the repository's own classes by the family env's python
(tests/real_code/build_tiny.py), then `ctsvqa infer` end to end on a 2-volume phantom set (the CLI, the
flow, the recipe, the worker in the family env, the model's own generate, the warehouse), in the
official and the upstream-harness variant. Asserted: every question of the volume stored `ok`; the
image reached the model (CT-CHAT 256 embeddings per image, VILA-M3 196, M3D/Med3DVLM the `<im_patch>`
layout with one encode per volume, Merlin 490 image tokens, RadFM 32); and the encode-once answers
of the volume's first two questions equal the answers of the same worker asked one question per call
(the volume encoded for each).

Needs the checkouts under $CTSVQA_UPSTREAM_CODE (default ~/.cache/ctsvqa/upstream-code: m3d/, med3dvlm/,
ctchat/{CT-CHAT,CT-CLIP}/, radfm/, vila-m3/{VILA,scaling_on_scales}/; Merlin's code is its PyPI
package) and the family envs (`ctsvqa env create FAMILY`): a test whose checkout or env is missing
skips, saying which. `scripts/real-code-check.sh` builds the missing envs and runs this suite.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pytest

from adapters.models import environments

REPO = Path(__file__).resolve().parents[2]
CODE_ROOT = Path(os.environ.get("CTSVQA_UPSTREAM_CODE") or "~/.cache/ctsvqa/upstream-code").expanduser()
VARIANTS = ("official", "upstream-harness")


@dataclass(frozen=True)
class Family:
    model: str
    code: str | None                        # the checkout's folder under CODE_ROOT (None: a pip package)
    markers: tuple[str, ...] = ()           # files the checkout must have
    options: dict = field(default_factory=dict)

    @property
    def code_dir(self) -> Path | None:
        return CODE_ROOT / self.code if self.code else None


FAMILIES = {
    "m3d": Family("m3d", "m3d", ("LaMed/src/model/language_model/lamed_phi3.py",), {"max_new_tokens": 6}),
    "med3dvlm": Family("med3dvlm", "med3dvlm", ("src/model/llm/qwen.py",), {"max_new_tokens": 6}),
    "ctchat": Family("ctchat", "ctchat", ("CT-CHAT/llava/model/builder.py",
                                          "CT-CLIP/transformer_maskgit/transformer_maskgit/ctvit.py"),
                     {"max_new_tokens": 6}),
    "radfm": Family("radfm", "radfm", ("Quick_demo/Model/RadFM/multimodality_model.py",)),
    "vila-m3": Family("vila-m3", "vila-m3", ("VILA/llava/model/builder.py", "scaling_on_scales/s2wrapper/__init__.py"),
                      {"max_new_tokens": 6}),
    "merlin": Family("merlin", None, (), {"max_new_tokens": 6}),
}


def image_problems(model: str, meta: dict) -> list[str]:
    """What says the image did not reach the model as its code means it to, from an answer's meta."""
    if model == "ctchat":
        want = meta["prompt_tokens"] - 1 + 256
        return [] if meta["input_embeddings"] == want else [f"LLM input {meta['input_embeddings']} != {want}"]
    if model == "vila-m3":
        want = meta["prompt_tokens"] - 1 + 196
        return [] if meta["input_embeddings"] == want else [f"LLM input {meta['input_embeddings']} != {want}"]
    if model in ("m3d", "med3dvlm"):
        bos = {"m3d": ("tokenizer", "prepended"), "med3dvlm": ("absent",)}[model]
        out = [] if meta["bos"] in bos else [f"bos {meta['bos']}"]
        return out + ([] if meta["image_encodes"] == 1 else [f"{meta['image_encodes']} encodes"])
    if model == "merlin":
        return [] if meta["image_tokens"] == 490 else [f"{meta['image_tokens']} image tokens"]
    if model == "radfm":
        out = [] if meta["image_tokens"] == 32 else [f"{meta['image_tokens']} image tokens"]
        return out + ([] if meta["image_encodes"] == 1 else [f"{meta['image_encodes']} encodes"])
    raise KeyError(model)


def ready(family: Family) -> environments.EnvStatus:
    """The family env, or a skip naming what is missing."""
    code = family.code_dir
    if code is not None:
        missing = [m for m in family.markers if not (code / m).is_file()]
        if missing:
            pytest.skip(f"no {family.model} checkout at {code} (missing {missing[0]}): fetch it at the commit in "
                        f"shared/research/models-code.md, or set CTSVQA_UPSTREAM_CODE")
    only = os.environ.get("CTSVQA_REAL_FAMILIES", "").split()
    if only and family.model not in only:
        pytest.skip(f"CTSVQA_REAL_FAMILIES={' '.join(only)}")
    status = environments.status(family.model)
    if not status.ready:
        pytest.skip(f"the {family.model} family env is not ready ({status.reason}): `ctsvqa env create {family.model}`")
    return status


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory):
    """family -> a tiny checkpoint built from the real classes in the family env (once per session)."""
    root = tmp_path_factory.mktemp("real-code-ckpt")
    built: dict[str, Path] = {}

    def get(family: Family, python: Path, builder: str | None = None) -> Path:
        builder = builder or family.model
        if builder not in built:
            out = root / builder
            code = str(family.code_dir) if family.code_dir else "-"
            done = subprocess.run([str(python), "-m", "tests.real_code.build_tiny", builder, code, str(out)],
                                  cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
                                  text=True, timeout=1200)
            assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
            built[builder] = out
        return built[builder]

    return get


@pytest.fixture(scope="session")
def phantoms(tmp_path_factory) -> Path:
    from adapters.datasets.phantom import generate

    root = tmp_path_factory.mktemp("real-code-phantoms")
    generate(root / "ph", 2, 13, "small")
    return root / "ph"


def stored(db: Path, name: str) -> list[tuple]:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute("SELECT p.qid, p.status, p.reason, p.text, p.provenance FROM predictions p JOIN runs r "
                           "USING (run_id) WHERE r.name = ? ORDER BY p.qid", [name]).fetchall()


def per_question(db: Path, args: dict, volume: str, questions: list) -> dict[str, str | None]:
    """The same adapter, through the same kind of worker, asked one question per call: the volume is
    encoded again for every question."""
    from adapters.models.base import ModelInput, Question
    from adapters.models.recipes import RECIPES
    from tasks.inference import InferRequest, input_rows, load_adapter, make_adapter, plan_run

    request = InferRequest(**args)
    adapter = make_adapter(request)
    plan = plan_run(db, request, adapter)
    status, _reason, path, shape, dtype, left = input_rows(db, plan.dataset_id, plan.recipe, [volume])[volume]
    assert status == "ok"
    recipe = RECIPES[plan.recipe]
    mi = ModelInput(volume, recipe.name, recipe.version, Path(path), tuple(shape), dtype, left)
    load_adapter(adapter, request)
    try:
        out = {}
        for qid, question in questions:
            (a,) = adapter.answer(mi, [Question(qid, question)])
            assert a.status == "ok", a.reason
            out[qid] = a.text
        return out
    finally:
        adapter.close()


def run_cli(model: str, variant: str, ckpt: Path, phantoms: Path, db: Path, capsys, options: dict) -> list[tuple]:
    from flows.cli import main
    from tasks.upstream_import import import_upstream

    family = FAMILIES[model]
    import_upstream(phantoms, db)
    argv = ["infer", "--model", model, "--checkpoint", str(ckpt), "--limit-volumes", "1", "--db", str(db),
            "--name", f"{model}-{variant}"]
    if family.code_dir:
        argv += ["--code-dir", str(family.code_dir)]
    for k, v in {**options, "variant": variant}.items():
        argv += ["--option", f"{k}={v}"]
    assert main(argv) == 0, capsys.readouterr().err
    return stored(db, f"{model}-{variant}")


def test_m3d_ids_past_the_tokenizer_fail_only_their_question(tiny_checkpoints, phantoms, prefect_server, tmp_path,
                                                             capsys):
    """M3D-Phi-3's embedding table is padded past its tokenizer (32064 rows, 32011 tokens): a generated
    padding id fails that question with the reason, and the others stay answers of one call per volume
    (the decode used to sit outside the per-question guard: the whole call failed and the runner asked
    again question by question, encoding the volume each time)."""
    family = FAMILIES["m3d"]
    env = ready(family)
    ckpt = tiny_checkpoints(family, env.python, "m3d-padded")
    rows = run_cli("m3d", "official", ckpt, phantoms, tmp_path / "wh.duckdb", capsys, family.options)
    errors = [reason for _, status, reason, _, _ in rows if status == "error"]
    ok = [json.loads(prov)["meta"] for _, status, _, _, prov in rows if status == "ok"]
    assert errors and ok, [r[:3] for r in rows]
    assert all("outside its tokenizer" in reason for reason in errors), errors
    assert all(meta["batch"] == len(rows) and meta["image_encodes"] == 1 for meta in ok), ok


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("model", list(FAMILIES))
def test_real_code_through_ctsvqa_infer(model, variant, tiny_checkpoints, phantoms, prefect_server, tmp_path, capsys):
    family = FAMILIES[model]
    env = ready(family)
    ckpt = tiny_checkpoints(family, env.python)
    db = tmp_path / "wh.duckdb"
    options = {**family.options, "variant": variant}
    rows = run_cli(model, variant, ckpt, phantoms, db, capsys, family.options)
    with duckdb.connect(str(db), read_only=True) as con:
        questions = con.execute("SELECT qid, question FROM questions WHERE volume = (SELECT volume FROM volumes "
                                "ORDER BY position LIMIT 1) ORDER BY qid").fetchall()
    assert [r[0] for r in rows] == [q for q, _ in questions]
    assert all(status == "ok" and text is not None for _, status, _, text, _ in rows), [r[:3] for r in rows]
    metas = [json.loads(prov)["meta"] for *_, prov in rows]
    problems = {qid: image_problems(model, meta) for (qid, *_), meta in zip(rows, metas)}
    assert not any(problems.values()), problems
    # only the new ids are counted (transformers < 4.38 puts a BOS column before them)
    cap = family.options.get("max_new_tokens", 200)
    assert all(meta.get("new_tokens", 0) <= cap for meta in metas), [meta.get("new_tokens") for meta in metas]
    provenance = json.loads(rows[0][4])
    assert provenance["recipe"].startswith(model if variant == "official" else f"{model}-upstream-harness")
    # the encode-once answers are the answers of one question per call (greedy, or sampling seeded per question)
    args = dict(model=model, checkpoint=str(ckpt), options=options, limit_volumes=1,
                code_dir=str(family.code_dir) if family.code_dir else None, name=f"{model}-{variant}")
    volume = provenance["volume"]
    # two questions, each its own call: each encodes the volume again (RadFM's harness input takes ~1 min)
    again = per_question(db, args, volume, questions[:2])
    assert again == {qid: text for qid, _, _, text, _ in rows[:2]}
