"""Small NIfTI files for volume and recipe tests: a body with one bright lesion on the patient's
left, stored in any orientation, with either slope/intercept convention."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel import orientations as ornt


def left_lesion_ras(shape=(64, 56, 40), lesion_hu: int = 900) -> np.ndarray:
    """(x, y, z) in RAS+ order: x grows toward the patient's right, so the left is at small x."""
    x, y, z = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    cx, cy = (shape[0] - 1) / 2, (shape[1] - 1) / 2
    hu = np.full(shape, -1000, dtype=np.int16)
    body = ((x - cx) / (0.45 * shape[0])) ** 2 + ((y - cy) / (0.42 * shape[1])) ** 2 <= 1
    hu[body] = 40
    # a vertical rod in the patient's left half, behind the midline: visible on every axial slice
    lesion = ((x - 0.25 * shape[0]) ** 2 + (y - 0.45 * shape[1]) ** 2) <= (0.07 * shape[0]) ** 2
    hu[lesion & body] = lesion_hu
    return hu


def save(path: Path, hu_ras: np.ndarray, codes: str = "LPS", spacing=(0.8, 0.8, 2.5),
         stored_offset: int = 0, dtype=np.int16) -> Path:
    """Store the RAS array with axis codes `codes` (e.g. 'LPS', 'RAS', 'LAI', 'PLS'). With
    stored_offset=1024 the file holds HU+1024 and scl_inter=-1024, as some CT converters write."""
    to = ornt.ornt_transform(ornt.axcodes2ornt("RAS"), ornt.axcodes2ornt(tuple(codes)))
    data = ornt.apply_orientation(hu_ras, to)
    ras_affine = np.diag([*spacing, 1.0])
    ras_affine[:3, 3] = [-100.0, -120.0, -60.0]
    affine = ras_affine @ ornt.inv_ornt_aff(to, hu_ras.shape)
    img = nib.Nifti1Image((data + stored_offset).astype(dtype), affine)
    img.header.set_slope_inter(1.0, -float(stored_offset))
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path
