"""The phantom generator: geometry, orientation, HU storage, QA truth, layout, determinism.

Checks here recompute facts from the saved files with plain nibabel + numpy (world coordinates
through each file's own affine), independently of the generator's LabelGeometry helper.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from adapters.datasets import phantom as P
from adapters.datasets import upstream
from adapters.datasets.upstream import discover, read_dataset

SEED = 7
DATASET = Path("dataset/ct_spatialvqa/spatial_qa_filtered_full.json")
CATS = Path("benchmarking/eval_scripts/spatial_categories/spatial_qa_filtered_full_with_categories.json")
KIND_WORD = {"nodule": "nodule", "mass": "mass", "effusion": "pleural effusion", "lymph_node": "enlarged lymph node"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, list[P.PhantomCase]]:
    out = tmp_path_factory.mktemp("phantom")
    return out, P.generate(out, 6, SEED, "small")


# ---- independent geometry, straight from a file's array and affine ------------------------

def world(img: nib.Nifti1Image, mask: np.ndarray) -> np.ndarray:
    """World (RAS mm) coordinates, shape (n, 3), of the voxels in mask."""
    ijk = np.stack(np.nonzero(mask), axis=1)
    return nib.affines.apply_affine(img.affine, ijk)


def labels_of(path: Path) -> tuple[nib.Nifti1Image, np.ndarray]:
    img = nib.load(path)
    return img, np.asanyarray(img.dataobj).astype(np.int32)


def midline_x(img, lab) -> float:
    return float(world(img, lab > 0)[:, 0].mean())


def world_spacing(img) -> np.ndarray:
    """Voxel size along world x, y, z (the affine is a signed permutation times spacing)."""
    return np.abs(img.affine[:3, :3]).max(axis=1)


def surrounding_lobe(lab, label_id) -> str:
    """Majority lobe among the face neighbours of a finding (orientation does not matter)."""
    m = np.pad(lab == label_id, 1)
    grown = m.copy()
    for ax in range(3):
        grown |= np.roll(m, 1, ax) | np.roll(m, -1, ax)
    shell = np.pad(lab, 1)[grown & ~m]
    counts = {lobe: int((shell == P.LOBE_LABEL[lobe]).sum()) for lobe in P.LOBES}
    return max(counts, key=counts.get)


# ---- laterality and level survive every storage orientation -------------------------------

@pytest.mark.parametrize("orientation", P.ORIENTATIONS)
@pytest.mark.parametrize("lobe,side,level", [("LLL", "left", "lower"), ("RUL", "right", "upper")])
def test_forced_lesion_side_and_level_in_every_orientation(tmp_path, orientation, lobe, side, level):
    arrays = P.make_case(3, 11, "small", orientation=orientation, findings=[("nodule", lobe)])
    vol, labp = tmp_path / "v.nii.gz", tmp_path / "v_labels.nii.gz"
    P.save_case(arrays, vol, labp)
    img, lab = labels_of(labp)
    assert "".join(nib.aff2axcodes(img.affine)) == orientation
    (nodule,) = arrays.findings
    pts = world(img, lab == nodule.label_id)
    assert len(pts) >= 1
    dx = pts[:, 0].mean() - midline_x(img, lab)
    assert (dx < -20) if side == "left" else (dx > 20)        # RAS: the patient's left has smaller x
    lung_ids = (7, 8) if side == "left" else (4, 5, 6)
    lung_z = world(img, np.isin(lab, lung_ids))[:, 2]
    mid = (lung_z.min() + lung_z.max()) / 2
    assert (pts[:, 2].mean() < mid) if level == "lower" else (pts[:, 2].mean() > mid)
    assert surrounding_lobe(lab, nodule.label_id) == lobe
    # and the generator's own QA says the same
    qa = {q["question"]: q["answer"] for q in P.qa_from_labels(lab, img.affine, arrays.findings, max_qa=None)}
    assert qa["Is the nodule in the upper or lower part of the lung?"] == f"In the {level} part of the {side} lung."
    assert qa["In which lobe is the nodule located?"] == f"In the {P.LOBE_TEXT[lobe]}."


def test_ignoring_the_affine_gets_left_and_right_wrong():
    """Same case, two storages: the nodule lands on opposite halves of array axis 0."""
    idx = {}
    for codes in ("LPS", "RAS"):
        a = P.make_case(3, 11, "small", orientation=codes, findings=[("nodule", "LLL")])
        i = np.nonzero(a.labels_stored == a.findings[0].label_id)[0].mean()
        idx[codes] = i / (a.labels_stored.shape[0] - 1)
    assert (idx["LPS"] - 0.5) * (idx["RAS"] - 0.5) < 0


# ---- stored intensities ------------------------------------------------------------------

def test_saved_volumes_read_back_as_hu(dataset):
    out, cases = dataset
    conventions, orientations = set(), set()
    for i, case in enumerate(cases):
        arrays = P.make_case(i, SEED, "small")
        img = nib.load(case.path)
        hdr = nib.Nifti1Header.from_fileobj(gzip.open(case.path))      # the raw on-disk header
        assert img.get_data_dtype() == np.int16
        slope, inter = float(hdr["scl_slope"]), float(hdr["scl_inter"])
        conventions.add((slope, inter))
        raw = np.asanyarray(img.dataobj.get_unscaled())
        assert raw.dtype == np.int16
        if inter == -1024:
            assert raw.min() >= 0                                     # HU + 1024 on disk
        canon = nib.as_closest_canonical(img)
        assert np.array_equal(canon.get_fdata(), arrays.hu_ras)          # slope/inter applied once
        assert np.allclose(canon.affine, arrays.affine_ras)
        lab_canon = nib.as_closest_canonical(nib.load(case.labels_path))
        assert np.array_equal(np.asanyarray(lab_canon.dataobj), arrays.labels_ras)
        assert np.allclose(nib.load(case.labels_path).affine, img.affine)
        orientations.add("".join(nib.aff2axcodes(img.affine)))
        assert "".join(nib.aff2axcodes(img.affine)) == case.orientation
    assert conventions == {(1.0, 0.0), (1.0, -1024.0)}
    assert {"LPS", "RAS"} <= orientations and len(orientations) >= 3


def test_hu_values_are_realistic():
    a = P.make_case(0, SEED, "small")
    hu, lab = a.hu_ras.astype(float), a.labels_ras
    assert a.hu_ras.dtype == np.int16 and hu.min() >= -1024 and hu.max() <= 3071
    lung = np.isin(lab, (4, 5, 6, 7, 8))
    assert -950 <= hu[lung].mean() <= -700
    assert 5 < hu[lung].std() < 60                                   # texture + noise, not flat
    for name in ("body", "muscle", "heart", "liver"):
        assert -150 <= hu[lab == P.LABELS[name]].mean() <= 100, name
    assert -130 <= hu[lab == P.LABELS["fat"]].mean() <= -70
    assert hu[np.isin(lab, (P.LABELS["spine"], P.LABELS["rib"]))].mean() > 250
    nx, ny, _ = hu.shape
    assert (hu[0, 0, :] == -1024).all()                              # corner: outside the FOV
    air = (lab == 0) & (hu > -1024)
    assert abs(hu[air].mean() + 1000) < 5 and 5 < hu[air].std() < 20
    # coarse anatomy: heart left of the midline, liver right, spine posterior
    xs = a.affine_ras[0, 3] + a.affine_ras[0, 0] * np.arange(nx)
    ys = a.affine_ras[1, 3] + a.affine_ras[1, 1] * np.arange(ny)
    mid = xs[np.nonzero(lab > 0)[0]].mean()
    assert xs[np.nonzero(lab == P.LABELS["heart"])[0]].mean() < mid - 10
    assert xs[np.nonzero(lab == P.LABELS["liver"])[0]].mean() > mid + 10
    assert ys[np.nonzero(lab == P.LABELS["spine"])[1]].mean() < ys[np.nonzero(lab == P.LABELS["heart"])[1]].mean()


def test_spacing_and_slices_vary_within_the_size_spec(dataset):
    _, cases = dataset
    assert len({c.spacing for c in cases}) > 1 and len({c.shape for c in cases}) > 1
    for c in cases:
        sx, sy, sz = c.spacing
        assert 3.5 <= sx == sy <= 4.0 and 5.0 <= sz <= 6.0
        assert c.shape[:2] == (96, 96) and 48 <= c.shape[2] <= 64     # no variant moves the slice axis


def test_full_size_case():
    a = P.make_case(2, SEED, "full", findings=[("mass", "LLL")])
    nx, ny, nz = a.hu_ras.shape
    sx, sy, sz = np.diag(a.affine_ras)[:3]
    assert (nx, ny) == (512, 512) and 200 <= nz <= 300
    assert 0.6 <= sx == sy <= 0.8 and 1.0 <= sz <= 1.5
    assert a.orientation == "LAI" and "".join(nib.aff2axcodes(a.affine)) == "LAI"
    qa = {q["question"]: q["answer"] for q in P.qa_from_labels(a.labels_stored, a.affine, a.findings, max_qa=None)}
    assert qa["In which lobe is the mass located?"] == "In the left lower lobe."
    mm = int(re.fullmatch(r"About (\d+) mm\.", qa["What is the largest diameter of the mass?"]).group(1))
    assert 20 <= mm <= 41


# ---- QA truth ------------------------------------------------------------------------------

def expected_answers(img, lab, findings) -> dict[str, str]:
    """Answers to the side / lobe / size / bilateral templates, recomputed from the file."""
    out, mid, sp = {}, midline_x(img, lab), world_spacing(img)
    for f in findings:
        pts = world(img, lab == f.label_id)
        w = KIND_WORD[f.kind]
        if f.kind in ("nodule", "mass"):
            side = "right" if pts[:, 0].mean() > mid else "left"
            out[f"Which side is the {w} on?"] = f"On the {side} side."
            out[f"Which lung contains the {w}?"] = f"The {side} lung."
            out[f"In which lobe is the {w} located?"] = f"In the {P.LOBE_TEXT[surrounding_lobe(lab, f.label_id)]}."
            diam = (np.ptp(pts, axis=0) + sp).max()
            out[f"What is the largest diameter of the {w}?"] = f"About {int(round(diam))} mm."
        elif f.kind == "effusion":
            right = (pts[:, 0] > mid).mean()
            both = 0.15 <= right <= 0.85
            out["Is the pleural effusion bilateral?"] = (
                "Yes, it is present on both sides." if both else f"No, it is on the {'right' if right > 0.5 else 'left'} side only.")
        elif f.kind == "lymph_node":
            ext = np.ptp(pts, axis=0) + sp
            out[f"What is the short-axis diameter of the {w}?"] = f"About {int(round(min(ext[0], ext[1])))} mm."
    return out


def test_qa_answers_agree_with_the_label_map(dataset):
    out, cases = dataset
    checked = 0
    for i, case in enumerate(cases):
        img, lab = labels_of(case.labels_path)
        everything = {q["question"]: q["answer"]
                      for q in P.qa_from_labels(lab, img.affine, case.findings, variant=i, max_qa=None)}
        for q in case.qa:                           # what was published is a subset of the truth
            assert everything[q["question"]] == q["answer"]
        for question, answer in expected_answers(img, lab, case.findings).items():
            if question in everything:
                assert everything[question] == answer, (case.volume, question)
                checked += 1
        # generation intent agrees with what the label map says
        for f in case.findings:
            if f.kind in ("nodule", "mass"):
                assert everything[f"In which lobe is the {f.kind} located?"] == f"In the {P.LOBE_TEXT[f.lobe_or_site]}."
    assert checked >= 12


def test_qa_never_reads_generation_parameters():
    a = P.make_case(1, SEED, "small")
    scrambled = [replace(f, lobe_or_site="RUL", side="midline", center_ras=(0.0, 0.0, 0.0), diameter_mm=1.0, hu=0.0)
                 for f in a.findings]
    assert P.qa_from_labels(a.labels_stored, a.affine, scrambled, variant=1) == \
        P.qa_from_labels(a.labels_stored, a.affine, a.findings, variant=1)
    # same label map in another storage orientation: same answers
    other = P._to_orientation(a.labels_ras, a.affine_ras, "PLS")
    assert P.qa_from_labels(*other, a.findings, variant=1) == P.qa_from_labels(a.labels_stored, a.affine, a.findings, variant=1)


def test_effusion_lymph_node_and_anatomy_questions():
    a = P.make_case(4, 3, "small", findings=[("effusion", "right"), ("lymph_node", "subcarinal")])
    qa = {q["question"]: q for q in P.qa_from_labels(a.labels_stored, a.affine, a.findings, max_qa=None)}
    ans = {k: v["answer"] for k, v in qa.items()}
    assert ans["Is the pleural effusion bilateral?"] == "No, it is on the right side only."
    assert ans["Where is the pleural effusion located?"] == "In the dependent posterior part of the right hemithorax."
    assert ans["Where is the enlarged lymph node located?"] == "In the subcarinal region, below the carina."
    assert ans["Is the enlarged lymph node above or below the carina?"] == "Below the carina."
    assert ans["Which side of the chest is the heart predominantly located on?"] == "On the left side."
    assert ans["Which hemidiaphragm is higher?"] == "The right hemidiaphragm is higher."
    assert ans["Which lung has three lobes?"] == "The right lung."
    assert qa["Where is the pleural effusion located?"]["category"] == [P.LAT, P.AP, P.ADJ]
    b = P.make_case(5, 3, "small", findings=[("effusion", "bilateral"), ("lymph_node", "prevascular")])
    ans = {q["question"]: q["answer"] for q in P.qa_from_labels(b.labels_stored, b.affine, b.findings, max_qa=None)}
    assert ans["Is the pleural effusion bilateral?"] == "Yes, it is present on both sides."
    assert ans["Is the enlarged lymph node anterior or posterior to the trachea?"] == "Anterior to the trachea."


# ---- layout ---------------------------------------------------------------------------------

def test_layout_and_json_files(dataset):
    out, cases = dataset
    names = [f"valid_{1001 + i}_a_1.nii.gz" for i in range(6)]
    assert [c.volume for c in cases] == names
    for c in cases:
        n = c.volume.split("_")[1]
        folder = out / "volumes" / f"valid_{n}" / f"valid_{n}_a"
        assert c.path == folder / c.volume and c.path.is_file()
        assert c.labels_path == folder / c.volume.replace(".nii.gz", "_labels.nii.gz") and c.labels_path.is_file()
        assert 1 <= len(c.findings) <= 4 and 6 <= len(c.qa) <= 10
    data = json.loads((out / DATASET).read_text())
    cats = json.loads((out / CATS).read_text())
    assert list(data) == names and list(cats) == names
    seen_categories = set()
    for name in names:
        pairs, labelled = data[name]["qa_pairs"], cats[name]["qa_pairs"]
        assert len(pairs) == len(labelled) >= 5
        triples = [(name, p["question"], p["answer"]) for p in pairs]
        assert len(set(triples)) == len(triples)
        for p, q in zip(pairs, labelled):
            assert set(p) == {"question", "answer"} and set(q) == {"question", "answer", "category"}
            assert (p["question"], p["answer"]) == (q["question"], q["answer"])
            assert p["question"] == p["question"].strip() and p["answer"] == p["answer"].strip() and p["answer"]
            assert q["category"] and set(q["category"]) <= set(P.CATEGORIES)
            seen_categories |= set(q["category"])
    assert seen_categories == set(P.CATEGORIES) and P.CATEGORIES == upstream.CATEGORIES
    manifest = json.loads((out / "ctsvqa_dataset.json").read_text())
    assert manifest == {**manifest, "name": f"phantom-small-s{SEED}", "synthetic": True, "generator": "ctsvqa.phantom v1",
                        "n": 6, "seed": SEED, "size": "small"} and manifest["description"]
    # the project's upstream importer reads it unchanged
    ds = read_dataset(discover(out))
    assert ds.volumes == names and ds.synthetic and ds.name == f"phantom-small-s{SEED}"
    assert len(ds.questions) == sum(len(c.qa) for c in cases) and ds.has_categories


# ---- determinism and speed ------------------------------------------------------------------

def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_generation_is_deterministic(dataset, tmp_path):
    # (speed is measured in bench/, never asserted here)
    out, _ = dataset
    P.generate(tmp_path / "again", 6, SEED, "small")
    a, b = tree_digest(out), tree_digest(tmp_path / "again")
    assert len(a) == 6 * 2 + 3 and a == b
    other = tree_digest(P.generate(tmp_path / "other", 1, SEED + 1, "small")[0].path.parent)
    first = {k.rsplit("/", 1)[1]: v for k, v in a.items() if k.startswith("volumes/valid_1001/")}
    assert set(other) == set(first) and all(other[k] != first[k] for k in first)   # the seed matters


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="size"):
        P.make_case(0, SEED, "huge")
    with pytest.raises(ValueError, match="orientation"):
        P.make_case(0, SEED, orientation="LLS")
    with pytest.raises(ValueError, match="unknown finding"):
        P.make_case(0, SEED, findings=[("nodule", "RXL")])
    with pytest.raises(ValueError, match="at most one per kind"):
        P.make_case(0, SEED, findings=[("nodule", "RUL"), ("nodule", "LLL")])
    with pytest.raises(ValueError, match="version"):
        P.make_case(0, SEED, version=3)
    with pytest.raises(ValueError, match="version"):
        P.generate(Path("/nonexistent"), 1, SEED, version=0)


# ---- v1 stays what it was; v2: half the bodies mirrored, no answer fixed by anatomy -----------

V1_QA_SHA = "4d46b474ce180017025d322c0d19742ed7c140963d700b9dd17c14174ee13841"   # seed 777, cases 0-7


def test_v1_is_reproduced_seed_for_seed():
    qa = [P.qa_from_labels(a.labels_stored, a.affine, a.findings, variant=i)
          for i, a in ((i, P.make_case(i, 777, "small")) for i in range(8))]
    assert hashlib.sha256(json.dumps(qa, sort_keys=True).encode()).hexdigest() == V1_QA_SHA
    assert not any(P.make_case(i, 777, "small").inversus for i in range(8))


V2_SEED = 20          # cases 1, 3, 4, 5 are mirrored, 0 and 2 are not


@pytest.fixture(scope="module")
def dataset_v2(tmp_path_factory) -> tuple[Path, list[P.PhantomCase]]:
    out = tmp_path_factory.mktemp("phantom_v2")
    return out, P.generate(out, 6, V2_SEED, "small", version=2)


def lobe_text(img, lab, label_id) -> str:
    """The lobe a finding sits in, named from where that lobe lies (its side) and its tier."""
    counts = {lobe_id: 0 for lobe_id in P.LOBE_TIER}
    m = np.pad(lab == label_id, 1)
    grown = m.copy()
    for ax in range(3):
        grown |= np.roll(m, 1, ax) | np.roll(m, -1, ax)
    shell = np.pad(lab, 1)[grown & ~m]
    for lobe_id in counts:
        counts[lobe_id] = int((shell == lobe_id).sum())
    lobe_id = max(counts, key=counts.get)
    side = "right" if world(img, lab == lobe_id)[:, 0].mean() > midline_x(img, lab) else "left"
    return f"{side} {P.LOBE_TIER[lobe_id]} lobe"


def test_v2_mirrors_half_the_bodies_and_its_answers_agree_with_the_label_map(dataset_v2):
    out, cases = dataset_v2
    assert [c.situs for c in cases] == ["solitus", "inversus", "solitus", "inversus", "inversus", "inversus"]
    manifest = json.loads((out / "ctsvqa_dataset.json").read_text())
    assert manifest["name"] == "phantom-v2-small-s20" and manifest["generator"] == "ctsvqa.phantom v2"
    checked = 0
    for i, case in enumerate(cases):
        img, lab = labels_of(case.labels_path)
        mid = midline_x(img, lab)
        everything = {q["question"]: q["answer"] for q in
                      P.qa_from_labels(lab, img.affine, case.findings, variant=i, max_qa=None, version=2)}
        for q in case.qa:
            assert everything[q["question"]] == q["answer"]
            assert q["question"] not in P.NOT_IN_V2
        heart = world(img, lab == P.LABELS["heart"])[:, 0].mean() - mid
        liver = world(img, lab == P.LABELS["liver"])[:, 0].mean() - mid
        trilobed = world(img, lab == 5)[:, 0].mean() - mid               # the middle lobe's lung
        assert (heart > 0) == (liver < 0) == (trilobed < 0) == (case.situs == "inversus")
        heart_side, three = ("right" if heart > 0 else "left"), ("right" if trilobed > 0 else "left")
        truth = {"Which side of the chest is the heart predominantly located on?": f"On the {heart_side} side.",
                 "Which lung has three lobes?": f"The {three} lung."}
        for f in case.findings:
            if f.kind in ("nodule", "mass"):
                truth[f"In which lobe is the {f.kind} located?"] = f"In the {lobe_text(img, lab, f.label_id)}."
                assert f"In the {P.LOBE_TEXT[f.lobe_or_site]}." == truth[f"In which lobe is the {f.kind} located?"]
        # (expected_answers names lobes by label id, as in situs solitus: `truth` names them by where they lie)
        for question, answer in {**expected_answers(img, lab, case.findings), **truth}.items():
            if question in everything:
                assert everything[question] == answer, (case.volume, question)
                checked += 1
    assert checked >= 20


def test_v2_forced_findings_are_named_as_they_end_up():
    a = P.make_case(3, 11, "small", findings=[("nodule", "LML"), ("lymph_node", "left paratracheal")],
                    version=2, inversus=True)
    qa = {q["question"]: q["answer"] for q in P.qa_from_labels(a.labels_stored, a.affine, a.findings,
                                                               max_qa=None, version=2)}
    assert a.inversus and qa["In which lobe is the nodule located?"] == "In the left middle lobe."
    assert qa["Where is the enlarged lymph node located?"] == "In the left paratracheal region."
    assert qa["Which side of the chest is the heart predominantly located on?"] == "On the right side."
    with pytest.raises(ValueError, match="unknown finding"):      # a mirrored body has no right middle lobe
        P.make_case(3, 11, "small", findings=[("nodule", "RML")], version=2, inversus=True)


def test_every_v2_template_has_more_than_one_answer():
    """On 60 volumes, no template asked five times or more has one answer everywhere (v1: ten do)."""
    def fixed(version):
        seen: dict[str, list] = {}
        for i in range(60):
            a = P.make_case(i, 777, "small", version=version)
            for q in P.qa_from_labels(a.labels_stored, a.affine, a.findings, variant=i, version=version):
                seen.setdefault(q["question"], []).append(q["answer"])
        return [q for q, answers in seen.items() if len(answers) >= 5 and len(set(answers)) == 1]
    assert fixed(2) == []
    assert len(fixed(1)) >= 9
