"""Decoding NIfTI volumes: HU exactly once, orientation known, bad files refused with a reason."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest

from adapters.models.preprocess import resize_clip, resize_reference
from adapters.volumes.nifti import DecodeCache, VolumeError, decode
from tests.volume_factory import left_lesion_ras, save

ORIENTATIONS = ["LPS", "RAS", "LAI", "PLS"]


@pytest.mark.parametrize("codes", ORIENTATIONS)
@pytest.mark.parametrize("offset", [0, 1024])
def test_decode_gives_hu_once_and_the_ras_frame(tmp_path, codes, offset):
    ras = left_lesion_ras()
    path = save(tmp_path / "v.nii.gz", ras, codes, stored_offset=offset)
    volume = decode(path)
    assert volume.axcodes == tuple(codes)
    assert volume.data.dtype == np.int16
    assert np.array_equal(volume.ras(), ras)                 # HU, slope/intercept applied exactly once
    assert np.array_equal(volume.canonical(), ras.transpose(2, 1, 0))
    assert volume.ras_zooms() == pytest.approx((0.8, 0.8, 2.5))
    # and what nibabel itself says
    assert np.array_equal(nib.as_closest_canonical(nib.load(path)).get_fdata().astype(np.int16), ras)


def test_uncompressed_nii_reads_the_same(tmp_path):
    ras = left_lesion_ras()
    a = decode(save(tmp_path / "a.nii.gz", ras, "LPS"))
    b = decode(save(tmp_path / "b.nii", ras, "LPS"))
    assert np.array_equal(a.data, b.data) and a.sha256 != b.sha256


def test_decode_cache_roundtrip(tmp_path):
    path = save(tmp_path / "v.nii.gz", left_lesion_ras(), "LAI", stored_offset=1024)
    cache = DecodeCache(tmp_path / "cache")
    first = cache.get(path)
    again = cache.get(path)                                  # from the .npy, memory-mapped
    assert isinstance(again.data, np.memmap) or isinstance(again.data.base, np.memmap)
    assert np.array_equal(first.ras(), again.ras()) and again.axcodes == ("L", "A", "I")
    assert not list(tmp_path.glob("**/*.nii"))               # never an uncompressed sibling


@pytest.mark.parametrize("size", [(16, 40, 48), (33, 64, 64), (7, 20, 30)])
def test_fast_resample_matches_the_reference(size):
    rng = np.random.default_rng(0)
    arr = rng.integers(-1024, 1500, size=(40, 56, 64)).astype(np.int16)
    view = arr.transpose(0, 2, 1)[:, ::-1, :]                # strided, like a reoriented view
    fast = resize_clip(view, size, (-1000, 1000))
    ref = resize_reference(view, size, (-1000, 1000))
    assert fast.shape == ref.shape == size
    assert np.abs(fast - ref).max() < 0.01                   # HU: float32 rounding of a different op order


def test_crop_aware_resize_equals_resize_then_crop():
    from adapters.models.preprocess import _crop_window, crop_pad

    rng = np.random.default_rng(1)
    arr = rng.integers(-1024, 1500, size=(60, 50, 70)).astype(np.int16)
    size, crop = (90, 40, 80), (50, 40, 64)
    whole = crop_pad(resize_clip(arr, size, (-1000, 1000)), crop, -1.0)
    part = crop_pad(resize_clip(arr, size, (-1000, 1000), _crop_window(size, crop)), crop, -1.0)
    assert np.abs(whole - part).max() < 0.01                 # HU, as for fast vs reference


def test_slice_lookup_table_equals_the_arithmetic():
    from adapters.models.preprocess import render_slices
    from adapters.models.recipes import RECIPES

    rng = np.random.default_rng(2)
    arr = rng.integers(-1300, 2000, size=(20, 32, 40)).astype(np.int16)
    for name in ("medgemma", "medgemma-upstream-harness", "vila-m3", "lingshu"):
        by_table = render_slices(RECIPES[name], arr)["slices"]
        by_math = render_slices(RECIPES[name], arr.astype(np.float32))["slices"]
        assert np.array_equal(by_table, by_math), name


def _truncated(path, good):
    raw = good.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    return path


def _gz(path, data: bytes):
    path.write_bytes(gzip.compress(data))
    return path


def _intercept_twice(path, good):
    """HU already in the voxels, and scl_inter -1024 on top (a converter that applied it itself)."""
    img = nib.load(good)
    twice = nib.Nifti1Image(np.asarray(img.dataobj.get_unscaled()), img.affine)
    twice.header.set_slope_inter(1.0, -1024.0)
    nib.save(twice, path)
    return path


def _no_orientation(path, good):
    img = nib.load(good)
    img.set_qform(img.affine, code=0)
    img.set_sform(img.affine, code=0)
    nib.save(img, path)
    return path


BAD = {
    "truncated gzip": (lambda p, good: _truncated(p, good), "corrupt or truncated gzip"),
    "wrong magic": (lambda p, good: _gz(p, gzip.decompress(good.read_bytes())[:344] + b"xxx\0" +
                                        gzip.decompress(good.read_bytes())[348:]), "not a NIfTI-1 file"),
    "2-D image": (lambda p, good: nib.save(nib.Nifti1Image(np.full((32, 32), -1000, np.int16), np.eye(4)), p) or p,
                  "expected a 3-D image, got 2-D"),
    "4-D image": (lambda p, good: nib.save(nib.Nifti1Image(np.full((8, 8, 8, 3), -1000, np.int16), np.eye(4)),
                                           p) or p, "expected a 3-D image, got 4-D"),
    "NaN voxels": (lambda p, good: nib.save(nib.Nifti1Image(
        np.where(np.arange(512).reshape(8, 8, 8) == 5, np.nan, -1000.0).astype(np.float32), np.eye(4)), p) or p,
        "1 NaN/inf voxels"),
    "absurd spacing": (lambda p, good: nib.save(nib.Nifti1Image(left_lesion_ras(), np.diag([0.7, 0.7, 500, 1])),
                                                p) or p, "absurd voxel spacing"),
    "empty volume": (lambda p, good: nib.save(nib.Nifti1Image(np.zeros((16, 16, 16), np.int16), np.eye(4)), p) or p,
                     "empty volume: every voxel is 0"),
    "not HU": (lambda p, good: nib.save(nib.Nifti1Image(np.arange(4096, dtype=np.int16).reshape(16, 16, 16),
                                                        np.eye(4)), p) or p, "no air in the image"),
    "slope applied twice": (lambda p, good: save(p, left_lesion_ras() * 4, "LPS"), "outside the CT range"),
    "missing file": (lambda p, good: p, "file not found"),
    "intercept applied twice": (_intercept_twice, "far below air"),
    "no orientation codes": (_no_orientation, "no orientation in the header (qform_code and sform_code are 0)"),
    "complex voxels": (lambda p, good: nib.save(nib.Nifti1Image(np.full((16, 16, 16), -1000, np.complex64),
                                                                np.eye(4)), p) or p, "complex voxel type"),
    "a directory": (lambda p, good: p.mkdir() or p, "is a directory, expected a file"),
}


@pytest.mark.parametrize("pad", [-3024, -2048])
def test_padding_outside_the_field_of_view_is_not_mistaken_for_a_double_intercept(tmp_path, pad):
    ras = left_lesion_ras()
    ras[:6], ras[-6:] = pad, pad                         # corners outside the reconstruction circle
    volume = decode(save(tmp_path / "v.nii.gz", ras, "LPS"))
    assert volume.data.min() == pad


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_volumes_are_refused_with_a_reason(tmp_path, case):
    good = save(tmp_path / "good.nii.gz", left_lesion_ras(), "LPS")
    make, message = BAD[case]
    path = make(tmp_path / "bad.nii.gz", good)
    with pytest.raises(VolumeError) as err:
        decode(path)
    assert message in str(err.value) and str(path) in str(err.value)
