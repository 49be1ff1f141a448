"""Every recipe on a volume with one lesion on the patient's left: the lesion must appear on the
side the recipe documents, for every storage orientation; shapes, dtypes and ranges as published."""

from __future__ import annotations

import numpy as np
import pytest

from adapters.models.preprocess import build, left_side
from adapters.models.recipes import FAMILIES, RECIPES, select
from tasks.volumes import decode
from tests.volume_factory import left_lesion_ras, save

ORIENTATIONS = ["LPS", "RAS", "LAI", "PLS"]

EXPECTED = {  # recipe -> (shape of the saved array for the 64x56x40 test volume, dtype, value range)
    "m3d": ((1, 32, 256, 256), "float32", (0, 1)),
    "m3d-upstream-harness": ((1, 32, 256, 256), "float32", (0, 1)),
    "med3dvlm": ((1, 128, 256, 256), "float32", (0, 1)),
    "med3dvlm-upstream-harness": ((1, 128, 256, 256), "float32", (0, 1)),
    "ctchat": ((1, 240, 480, 480), "float32", (-1, 1)),
    "ctchat-upstream-harness": ((1, 240, 480, 480), "float32", (-1, 1)),
    "merlin": ((1, 224, 224, 160), "float32", (0, 1)),
    "merlin-upstream-harness": ((1, 160, 224, 224), "float32", (0, 1)),
    "radfm": ((3, 256, 256, 64), "float32", (0, 1)),
    "radfm-upstream-harness": ((3, 512, 512, 128), "float32", (0, 1)),
    "medgemma": ((40, 56, 64, 3), "uint8", (0, 255)),
    "medgemma-upstream-harness": ((40, 896, 896, 3), "uint8", (0, 255)),
    "vila-m3": ((1, 56, 64, 3), "uint8", (0, 255)),
    "vila-m3-upstream-harness": ((1, 56, 64, 3), "uint8", (0, 255)),
    "lingshu": ((32, 56, 64, 3), "uint8", (0, 255)),
    "lingshu-upstream-harness": ((32, 56, 64, 3), "uint8", (0, 255)),
    "phantom-expert": ((1, 40, 56, 64), "int16", (-1000, 900)),          # HU as decoded, native grid
}


@pytest.fixture(scope="module")
def volumes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vols")
    return {codes: decode(save(folder / f"{codes}.nii.gz", left_lesion_ras(), codes, stored_offset=1024 * (i % 2)))
            for i, codes in enumerate(ORIENTATIONS)}


def lesion_side(array: np.ndarray, axis: int) -> str:
    """Which half of `axis` holds the lesion: the brightest voxels (900 HU is the volume's maximum,
    so it stays the maximum under every window), by their centroid."""
    values = array[..., 0] if array.dtype == np.uint8 else array      # one channel of an RGB stack
    values = values.astype(np.float64)
    bright = values >= values.max() - 0.05 * (values.max() - values.min())
    return half_of(bright, axis)


def half_of(weights: np.ndarray, axis: int) -> str:
    """'low' or 'high': which half of `axis` the weights' centroid falls in."""
    profile = weights.sum(axis=tuple(i for i in range(weights.ndim) if i != axis))
    centre = (profile * np.arange(len(profile))).sum() / profile.sum()
    return "low" if centre < (len(profile) - 1) / 2 else "high"


@pytest.mark.parametrize("name", sorted(RECIPES))
@pytest.mark.parametrize("codes", ORIENTATIONS)
def test_left_lesion_lands_on_the_documented_side(volumes, name, codes):
    recipe, volume = RECIPES[name], volumes[codes]
    out = build(recipe, volume)
    array = out.get("arr", out.get("slices"))
    axis, end = left_side(recipe, volume)
    assert lesion_side(array, axis) == end
    if not recipe.frame.startswith("voxel"):
        # the models' own recipes do not depend on how the file was stored (up to float32 rounding:
        # the separable resize runs along the file's memory order)
        reference = build(recipe, volumes["RAS"])
        np.testing.assert_allclose(array, reference.get("arr", reference.get("slices")), atol=1e-5, rtol=0)


def test_upstream_harness_variants_flip_with_the_file_as_upstream_did(volumes):
    """The harness never reoriented: an L,P,S file and an R,A,S file put the lesion on opposite sides."""
    recipe = RECIPES["m3d-upstream-harness"]
    a = build(recipe, volumes["LPS"])["arr"]
    b = build(recipe, volumes["RAS"])["arr"]
    assert lesion_side(a, 3) != lesion_side(b, 3)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_shape_dtype_range(volumes, name):
    out = build(RECIPES[name], volumes["LPS"])
    array = out.get("arr", out.get("slices"))
    shape, dtype, (lo, hi) = EXPECTED[name]
    assert array.shape == shape and str(array.dtype) == dtype
    assert array.min() >= lo and array.max() <= hi
    assert array.max() > array.min()
    if "slice_indices" in out:
        assert len(out["slice_indices"]) == array.shape[0]


def test_every_recipe_is_documented_and_versioned():
    assert set(FAMILIES) <= set(RECIPES) and len(select("own")) == 8 and len(select("upstream")) == 8
    for recipe in RECIPES.values():
        assert recipe.left and recipe.version and recipe.source and recipe.key == f"{recipe.name}@{recipe.version}"
    with pytest.raises(ValueError, match="unknown recipe"):
        select("m3d,nope")


def test_ctchat_reproduces_ct_clip_sizes_and_padding(volumes):
    """CT-CLIP sizes by int() truncation and pads with -1 (air after /1000 is -1 as well)."""
    out = build(RECIPES["ctchat"], volumes["LPS"])["arr"][0]
    # 40 slices x 2.5 mm -> int(40 * 2.5 / 1.5) = 66 slices, centred in 240: rows outside are padding
    assert (out[:80] == -1).all() and (out[-80:] == -1).all()
    assert (out[100:140] > -1).any()


@pytest.fixture(scope="module")
def phantom_pairs(tmp_path_factory):
    """Phantom chest CTs with a left-sided lesion — a mass in the left lower lobe and the whole left
    lung consolidated (so every axial slice through the chest shows it) — and the same case without
    it, stored in each orientation: their difference shows where a recipe puts the lesion."""
    from adapters.datasets.phantom import LABELS, make_case

    folder = tmp_path_factory.mktemp("phantoms")
    pairs = {}
    for i, codes in enumerate(ORIENTATIONS):
        case = make_case(i, seed=3, size="small", orientation=codes, findings=[("mass", "LLL")])
        left_lung = np.isin(case.labels_ras, [LABELS["lung_lul"], LABELS["lung_lll"]]) | (case.labels_ras >= 100)
        sick = case.hu_ras.copy()
        sick[left_lung] = 40                            # consolidated: soft tissue instead of air
        healthy = case.hu_ras.copy()
        healthy[case.labels_ras >= 100] = -860          # the mass erased too
        spacing = tuple(float(s) for s in np.abs(np.diag(case.affine_ras)[:3]))
        a = decode(save(folder / f"{codes}.nii.gz", sick, codes, spacing=spacing))
        b = decode(save(folder / f"{codes}-healthy.nii.gz", healthy, codes, spacing=spacing))
        pairs[codes] = (a, b)
    return pairs


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_phantom_left_finding_on_the_documented_side(phantom_pairs, name):
    recipe = RECIPES[name]
    seen = 0
    for codes, (with_finding, without) in phantom_pairs.items():
        a, b = build(recipe, with_finding), build(recipe, without)
        key = "arr" if "arr" in a else "slices"
        diff = np.abs(a[key].astype(np.float64) - b[key].astype(np.float64))
        if diff.max() == 0:
            continue
        axis, end = left_side(recipe, with_finding)
        values = diff[..., 0] if key == "slices" else diff
        assert half_of(values, axis) == end, codes
        seen += 1
    assert seen == len(ORIENTATIONS)                    # every recipe saw the findings in every orientation
