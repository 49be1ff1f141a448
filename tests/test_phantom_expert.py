"""The phantom expert reads only its recipe input (HU + spacing), gets left and right from the
canonical frame whatever the storage orientation, answers the phantom's templates well, and fails
with a reason, never an exception or a guess, on what it cannot read."""

from __future__ import annotations

import dataclasses

import sys
from pathlib import Path

import numpy as np
import pytest

from adapters.datasets.phantom import LAT, ORIENTATIONS, generate, make_case, qa_from_labels, save_case
from adapters.judges.offline import spatial_verdict
from adapters.models import phantom_segment
from adapters.models.base import ModelInput, Question
from adapters.models.phantom_expert import PhantomExpert, template_of
from adapters.models.preprocess import build
from adapters.models.recipes import RECIPES
from tasks.volumes import decode
from tests.volume_factory import left_lesion_ras, save

RECIPE = RECIPES["phantom-expert"]


def model_input(volume_path: Path, folder: Path) -> ModelInput:
    """The preprocess flow's way: decode, build the recipe, save the npz somewhere else."""
    arrays = build(RECIPE, decode(volume_path))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{volume_path.name}.npz"
    np.savez(path, **arrays)
    return ModelInput(volume_path.name, RECIPE.name, RECIPE.version, path, tuple(arrays["arr"].shape),
                      str(arrays["arr"].dtype), "axis 3, low index")


def ask(expert, mi, qas):
    questions = [Question(str(i), qa["question"]) for i, qa in enumerate(qas)]
    by_qid = {a.qid: a for a in expert.answer(mi, questions)}
    assert set(by_qid) == {q.qid for q in questions}
    return [by_qid[q.qid] for q in questions]


EXTRA = [{"question": "Which side is the mass on?"}, {"question": "Is there a pneumothorax on the left?"},
         {"question": "Which side is the nodule on?"}]


@pytest.fixture(scope="module")
def oriented(tmp_path_factory):
    """One case — a left lower lobe mass and a right effusion, no nodule — stored in each of the
    generator's four orientations (and both slope/intercept conventions); references from its label
    map; the expert's answers to every question it answers plus three more, one call per volume."""
    root = tmp_path_factory.mktemp("oriented")
    expert = PhantomExpert()
    out = {}
    for i, codes in enumerate(ORIENTATIONS):
        arrays = make_case(0, seed=5, size="small", orientation=codes,
                           findings=[("mass", "LLL"), ("effusion", "right")], rescaled=bool(i % 2))
        vol, labels = root / "data" / f"{codes}.nii.gz", root / "data" / f"{codes}_labels.nii.gz"
        save_case(arrays, vol, labels)
        qas = qa_from_labels(arrays.labels_stored, arrays.affine, arrays.findings, variant=i, max_qa=None)
        mi = model_input(vol, root / "inputs")
        out[codes] = (mi, qas, ask(expert, mi, qas + EXTRA))
    return out


def test_laterality_is_right_in_every_storage_orientation(oriented):
    seen = 0
    for codes, (_, qas, answers) in oriented.items():
        lateral = [(qa, a) for qa, a in zip(qas, answers) if LAT in qa["category"]]
        assert len(lateral) >= 5, codes
        for qa, answer in lateral:
            assert answer.status == "ok", (codes, qa["question"], answer.reason)
            verdict, why = spatial_verdict(qa["question"], qa["answer"], answer.text)
            assert verdict is True, (codes, qa["question"], qa["answer"], answer.text, why)
            seen += 1
    assert seen >= 20


def test_the_mass_is_found_on_the_left_whatever_the_storage(oriented):
    texts = {answers[len(qas)].text for _, qas, answers in oriented.values()}
    assert texts == {"On the left side."}


def test_same_answers_whatever_the_storage(oriented):
    """Storage orientation and slope/intercept change nothing the expert says."""
    said = [{q["question"]: a.text for q, a in zip(qas + EXTRA, answers)} for _, qas, answers in oriented.values()]
    common = set.intersection(*(set(s) for s in said))
    assert len(common) >= 10
    assert all(s[q] == said[0][q] for s in said[1:] for q in common)


def test_accuracy_on_a_small_generated_set(tmp_path):
    cases = generate(tmp_path / "set", n=4, seed=11, size="small")
    expert = PhantomExpert()
    verdicts, errors = [], 0
    for case in cases:
        mi = model_input(case.path, tmp_path / "inputs")
        for qa, answer in zip(case.qa, ask(expert, mi, case.qa)):
            if answer.status != "ok":
                errors += 1
                assert answer.reason, qa["question"]
                continue
            verdict, _ = spatial_verdict(qa["question"], qa["answer"], answer.text)
            if verdict is not None:
                verdicts.append(verdict)
    assert len(verdicts) >= 15
    # errors (findings the image does not show, such as a mediastinal node) count against it
    assert sum(verdicts) / (len(verdicts) + errors) >= 0.8


def test_a_mirrored_body_is_read_where_its_organs_lie(tmp_path):
    """Situs inversus (phantom v2): the same case mirrored gives the mirrored answers, in two storages."""
    expert = PhantomExpert()
    said = {}
    for inversus, codes in ((False, "LPS"), (True, "LPS"), (True, "PLS")):
        arrays = make_case(2, seed=5, size="small", orientation=codes, version=2, inversus=inversus,
                           findings=[("mass", "LUL" if inversus else "RUL"), ("effusion", "left")])
        vol = tmp_path / f"{inversus}-{codes}.nii.gz"
        save_case(arrays, vol, tmp_path / f"{inversus}-{codes}_labels.nii.gz")
        qas = qa_from_labels(arrays.labels_stored, arrays.affine, arrays.findings, max_qa=None, version=2)
        answers = ask(expert, model_input(vol, tmp_path / "inputs"), qas)
        checked = 0
        for qa, answer in zip(qas, answers):
            if qa["question"] in ("Which side of the chest is the heart predominantly located on?",
                                  "Which lung has three lobes?", "In which lobe is the mass located?",
                                  "Which side is the pleural effusion on?", "Which hemidiaphragm is higher?"):
                assert answer.text == qa["answer"], (inversus, codes, qa["question"], answer.reason)
                checked += 1
        assert checked == 4, (inversus, codes)
        said[(inversus, codes)] = {qa["question"]: qa["answer"] for qa in qas}
    assert said[(False, "LPS")]["In which lobe is the mass located?"] == "In the right upper lobe."
    assert said[(True, "LPS")]["In which lobe is the mass located?"] == "In the left upper lobe."
    assert said[(True, "LPS")]["Which lung has three lobes?"] == "The left lung."
    assert said[(True, "PLS")] == said[(True, "LPS")]


def test_it_reads_nothing_but_its_input(oriented):
    """No label map, manifest or QA file is opened while answering: only the recipe's npz (the
    fixture has answered already, so lazy imports are done)."""
    mi, qas, _ = oriented["LPS"]
    opened: list[str] = []
    active = [False]

    def hook(event, args):
        if active[0] and event == "open" and isinstance(args[0], (str, bytes, Path)):
            opened.append(str(args[0]))

    sys.addaudithook(hook)
    active[0] = True
    try:
        answers = ask(PhantomExpert(), dataclasses.replace(mi), qas)     # a fresh ModelInput: nothing cached
    finally:
        active[0] = False
    assert any(a.status == "ok" for a in answers)
    data_files = [p for p in opened if not p.endswith((".py", ".pyc", ".so"))]
    assert data_files == [str(mi.path)]


def test_unknown_template_is_an_error_with_a_reason(oriented):
    _, qas, answers = oriented["LPS"]
    unknown = answers[len(qas) + 1]
    assert unknown.status == "error" and unknown.text is None and "not a phantom question template" in unknown.reason
    assert template_of("  which SIDE is the nodule on? ") == (True, "nodule")
    assert template_of("Which side is the tumour on?") == (False, None)


def test_a_finding_that_is_not_there_is_reported_absent_not_guessed(oriented):
    _, qas, answers = oriented["LPS"]                 # a mass and an effusion, no nodule
    nodule = answers[len(qas) + 2]
    assert nodule.status == "ok" and nodule.text == "I see no nodule in the chest."
    assert spatial_verdict("Which side is the nodule on?", "On the left side.", nodule.text)[0] is False
    [node] = PhantomExpert().answer(oriented["LPS"][0], [Question("n", "Which side is the enlarged lymph node on?")])
    assert node.status == "error" and "no enlarged lymph node found" in node.reason


def test_volumes_that_are_not_phantoms_give_error_answers(tmp_path):
    questions = [Question("1", "Which side is the mass on?"), Question("2", "Which lung is larger?"),
                 Question("3", "What is the maximum transverse width of the chest?")]
    # a constant -1000 HU volume (decode refuses it, so the npz is written directly)
    air = tmp_path / "air.npz"
    np.savez(air, arr=np.full((1, 20, 24, 24), -1000, np.int16), spacing=np.array([5.0, 2.0, 2.0]))
    # a body with a bright rod and no lungs, through the real decode + recipe path
    rod = model_input(save(tmp_path / "rod.nii.gz", left_lesion_ras(), "LPS"), tmp_path / "inputs")
    # an input of another recipe (no spacing)
    other = tmp_path / "other.npz"
    np.savez(other, slices=np.zeros((2, 8, 8, 3), np.uint8))
    inputs = {
        "air": ModelInput("air", RECIPE.name, RECIPE.version, air, (1, 20, 24, 24), "int16", ""),
        "rod": rod,
        "other": ModelInput("other", "medgemma", "1", other, (2, 8, 8, 3), "uint8", ""),
    }
    reasons = {}
    for name, mi in inputs.items():
        answers = PhantomExpert().answer(mi, questions)
        assert [a.qid for a in answers] == ["1", "2", "3"]
        assert all(a.status == "error" and a.text is None and a.reason for a in answers), name
        reasons[name] = answers[0].reason
    assert "no body outline" in reasons["air"]
    assert "no air-filled lungs" in reasons["rod"]
    assert "expected the phantom-expert recipe's npz" in reasons["other"]
    assert PhantomExpert().answer(None, questions[:1])[0].status == "error"


@pytest.mark.parametrize("structure", ["face6", "inplane"])
def test_numpy_components_partition_like_scipy(structure):
    """Without scipy the expert labels components itself; the partition must be scipy's."""
    ndimage = pytest.importorskip("scipy.ndimage")
    st = {"face6": phantom_segment._FACE6, "inplane": phantom_segment._INPLANE}[structure]
    mask = np.random.default_rng(0).random((20, 18, 12)) < 0.45
    ours, n_ours = phantom_segment._label_numpy(mask, st)
    ref, n_ref = ndimage.label(mask, structure=st)
    assert n_ours == n_ref > 10
    assert len(set(zip(ours[mask].tolist(), ref[mask].tolist()))) == n_ref     # one-to-one
