"""Reading CT volumes: decode a NIfTI once, apply slope/intercept exactly once, know its orientation.

The canonical frame, used by every recipe that does not deliberately reproduce a harness's voxel
order, is `Volume.canonical()`: a (z, y, x) array of int16 HU where
  z increases from inferior to superior, y from posterior to anterior, x from the patient's LEFT
  to the patient's RIGHT  (nibabel's RAS+ voxel axes, transposed to z-first).
So in the canonical array the patient's left is at x index 0.

Decoding uses python-isal (about 2x zlib here) and parses the header with nibabel without copying
the voxel data (../shared/research/preprocessing-perf.md §8). Never write an uncompressed `.nii`
beside a `.nii.gz`: SimpleITK silently reads the sibling instead.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from isal import igzip
from nibabel import orientations as ornt

HU_MIN, HU_MAX = -3024, 4095           # widest range scanners and converters produce
# Constant fill values scanners write outside the reconstruction circle; they are not air.
PADDING_HU = (-3024, -3000, -2048, -2000)
# Air is about -1000 HU. When most of the image's darkest 5 % sits below this, the intercept was
# applied twice (a converter that scaled the voxels and also kept scl_inter).
AIR_FLOOR_HU = -1500
SPACING_MIN_MM, SPACING_MAX_MM = 0.05, 20.0


class VolumeError(ValueError):
    """A volume that cannot be used; the message names the file and the reason."""

    def __init__(self, path: Path | str, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"{path}: {reason}")


@dataclass
class Volume:
    path: Path
    sha256: str                 # of the file's bytes: the cache key of everything derived from it
    data: np.ndarray            # stored voxel order (i, j, k), HU, int16 where the values are integral
    affine: np.ndarray
    zooms: tuple[float, float, float]

    @property
    def axcodes(self) -> tuple[str, str, str]:
        return nib.aff2axcodes(self.affine)

    def ras(self) -> np.ndarray:
        """(x, y, z) in RAS+ voxel order: a view (flips and transposes only, no copy)."""
        transform = ornt.ornt_transform(ornt.io_orientation(self.affine), ornt.axcodes2ornt("RAS"))
        return ornt.apply_orientation(self.data, transform)

    def canonical(self) -> np.ndarray:
        """(z, y, x): superior-, anterior-, patient-right-increasing. Patient left = x index 0."""
        return self.ras().transpose(2, 1, 0)

    def ras_zooms(self) -> tuple[float, float, float]:
        order = ornt.io_orientation(self.affine)[:, 0].astype(int)     # stored axis -> RAS axis
        zooms = [0.0, 0.0, 0.0]
        for stored_axis, ras_axis in enumerate(order):
            zooms[ras_axis] = self.zooms[stored_axis]
        return tuple(zooms)

    def canonical_spacing(self) -> tuple[float, float, float]:
        x, y, z = self.ras_zooms()
        return z, y, x

    def metadata(self) -> dict:
        return {"path": str(self.path), "sha256": self.sha256, "shape": list(self.data.shape),
                "dtype": str(self.data.dtype), "affine": self.affine.tolist(), "zooms": list(self.zooms),
                "axcodes": list(self.axcodes)}


def _decompress(path: Path, raw: bytes) -> bytes:
    if path.name.endswith(".gz"):
        try:
            return igzip.decompress(raw)
        except (OSError, EOFError, ValueError) as exc:
            raise VolumeError(path, f"corrupt or truncated gzip stream ({exc})") from None
    return raw


def _header(path: Path, body: bytes) -> nib.Nifti1Header:
    if len(body) < 348:
        raise VolumeError(path, f"file too short for a NIfTI header ({len(body)} bytes)")
    if body[344:348] not in (b"n+1\0", b"ni1\0"):
        if body[4:8] in (b"n+2\0", b"ni2\0"):
            raise VolumeError(path, "NIfTI-2 files are not supported")
        raise VolumeError(path, f"not a NIfTI-1 file (magic {body[344:348]!r})")
    try:
        return nib.Nifti1Header.from_fileobj(io.BytesIO(body[:348]), check=False)
    except Exception as exc:  # noqa: BLE001  (nibabel raises several kinds on broken headers)
        raise VolumeError(path, f"unreadable NIfTI header ({exc})") from None


def decode(path: str | os.PathLike, raw: bytes | None = None) -> Volume:
    """Decode one `.nii`/`.nii.gz` into HU with its affine, validating everything a recipe relies on.
    `raw`: the file's bytes, when the caller has read them already."""
    path = Path(path)
    if raw is None:
        raw = read_file(path)
    sha = hashlib.sha256(raw).hexdigest()
    body = _decompress(path, raw)
    hdr = _header(path, body)
    if int(hdr["qform_code"]) == 0 and int(hdr["sform_code"]) == 0:
        raise VolumeError(path, "no orientation in the header (qform_code and sform_code are 0): nibabel would "
                                "guess one that flips anterior/posterior, so left/right cannot be trusted")
    shape = tuple(int(s) for s in hdr.get_data_shape())
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise VolumeError(path, f"expected a 3-D image, got {len(shape)}-D with shape {shape}")
    if min(shape) < 2:
        raise VolumeError(path, f"degenerate shape {shape}")
    dtype = hdr.get_data_dtype()
    if dtype.kind not in "iuf":
        kind = "complex voxel type" if dtype.kind == "c" else "voxel type"
        raise VolumeError(path, f"{kind} {hdr.get_data_dtype()!s}: not a CT image (expected integers or floats)")
    offset = int(hdr["vox_offset"])
    count = int(np.prod(shape))
    if len(body) < offset + count * dtype.itemsize:
        raise VolumeError(path, f"truncated voxel data: {len(body) - offset} of {count * dtype.itemsize} bytes")
    data = np.frombuffer(body, dtype=dtype, count=count, offset=offset).reshape(shape, order="F")
    zooms = tuple(float(z) for z in hdr.get_zooms()[:3])
    if not all(SPACING_MIN_MM <= z <= SPACING_MAX_MM for z in zooms):
        raise VolumeError(path, f"absurd voxel spacing {zooms} mm (expected {SPACING_MIN_MM}-{SPACING_MAX_MM})")
    data = _apply_scaling(path, data, hdr)
    affine = hdr.get_best_affine()
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise VolumeError(path, "singular or non-finite affine")
    _check_hu(path, data)
    return Volume(path, sha, data, affine, zooms)


def _apply_scaling(path: Path, data: np.ndarray, hdr: nib.Nifti1Header) -> np.ndarray:
    """HU = stored * slope + intercept, applied here and nowhere else."""
    if data.dtype.kind == "f" and not np.all(np.isfinite(data)):
        raise VolumeError(path, f"{int(np.size(data) - np.isfinite(data).sum())} NaN/inf voxels")
    slope, inter = hdr.get_slope_inter()
    slope = 1.0 if slope is None or not np.isfinite(slope) else float(slope)
    inter = 0.0 if inter is None or not np.isfinite(inter) else float(inter)
    if slope == 0.0:
        raise VolumeError(path, "scl_slope is 0")
    if slope == 1.0 and inter == 0.0 and data.dtype == np.int16:
        return data
    hu = data.astype(np.float32) * np.float32(slope) + np.float32(inter)
    if np.all(hu == np.round(hu)) and hu.min() >= np.iinfo(np.int16).min and hu.max() <= np.iinfo(np.int16).max:
        return hu.astype(np.int16)
    return hu


def _check_hu(path: Path, data: np.ndarray) -> None:
    lo, hi = float(data.min()), float(data.max())
    if lo == hi:
        raise VolumeError(path, f"empty volume: every voxel is {lo:g}")
    if lo < HU_MIN or hi > HU_MAX:
        raise VolumeError(path, f"values {lo:g}..{hi:g} are outside the CT range {HU_MIN}..{HU_MAX} HU "
                                f"(slope/intercept missing or applied twice?)")
    if lo > -500:
        raise VolumeError(path, f"no air in the image (minimum {lo:g} HU): not HU, or not a CT")
    if lo < AIR_FLOOR_HU:
        step = max(1, round((data.size / 1e6) ** (1 / 3)))         # ~1M voxels are plenty for a percentile
        sample = np.asarray(data[::step, ::step, ::step]).ravel()
        sample = sample[~np.isin(sample, PADDING_HU)]
        air = float(np.percentile(sample, 5)) if sample.size else lo
        if air < AIR_FLOOR_HU:
            raise VolumeError(path, f"values far below air: the darkest 5 % is at {air:g} HU, air is about -1000 "
                                    f"(scl_inter applied twice? the header says it; were the voxels already HU?)")


def read_file(path: Path) -> bytes:
    """The file's bytes; what is not a readable regular file is named for what it is."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise VolumeError(path, "file not found" if not os.path.islink(path) else "broken symlink") from None
    except OSError as exc:
        raise VolumeError(path, f"cannot read ({exc.strerror})") from None
    if stat.S_ISDIR(mode):
        raise VolumeError(path, "is a directory, expected a file")
    if not stat.S_ISREG(mode):
        raise VolumeError(path, "is not a regular file (a FIFO, socket or device?)")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise VolumeError(path, f"cannot read ({exc.strerror})") from None


class DecodeCache:
    """Decode once per file content: the int16 (z, y, x)-ordered buffer as .npy plus a JSON sidecar
    with the header metadata, keyed by the file's sha256, written atomically."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def _paths(self, sha: str) -> tuple[Path, Path]:
        folder = self.root / sha[:2]
        return folder / f"{sha}.npy", folder / f"{sha}.json"

    def get(self, path: str | os.PathLike) -> Volume:
        path = Path(path)
        raw = read_file(path)
        sha = hashlib.sha256(raw).hexdigest()
        array_path, meta_path = self._paths(sha)
        if array_path.is_file() and meta_path.is_file():
            meta = json.loads(meta_path.read_text())
            data = np.load(array_path, mmap_mode="r").T                # back to stored (i, j, k)
            return Volume(path, sha, data, np.array(meta["affine"]), tuple(meta["zooms"]))
        volume = decode(path, raw)
        self.put(volume)
        return volume

    def put(self, volume: Volume) -> None:
        array_path, meta_path = self._paths(volume.sha256)
        array_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = array_path.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, np.ascontiguousarray(volume.data.T))
        os.replace(tmp, array_path)
        meta_tmp = meta_path.with_suffix(f".{os.getpid()}.tmp")
        meta_tmp.write_text(json.dumps(volume.metadata()))
        os.replace(meta_tmp, meta_path)
