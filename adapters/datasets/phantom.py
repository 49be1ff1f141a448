"""Deterministic synthetic chest-CT phantoms whose spatial answers are known from geometry.

Why: the benchmark's largest category is laterality, and most model pipelines read NIfTI voxel
order without looking at the affine. A phantom with a lesion on a known side, stored under several
orientations, shows which pipelines get left and right wrong; and because every QA answer here is
*measured* from the saved label map (in RAS world millimetres, through the affine), a correct
image-reading system can score 100 % and a blind one cannot.

Pure numpy + nibabel; nothing of DuckDB or Prefect. The output folder follows the upstream
CT-SpatialVQA layout, so ``adapters.datasets.upstream`` reads it unchanged:

    out/volumes/valid_N/valid_N_a/valid_N_a_1.nii.gz          int16 CT (HU, maybe slope/inter)
    out/volumes/valid_N/valid_N_a/valid_N_a_1_labels.nii.gz   uint8 label map, same affine
    out/dataset/ct_spatialvqa/spatial_qa_filtered_full.json
    out/benchmarking/eval_scripts/spatial_categories/spatial_qa_filtered_full_with_categories.json
    out/ctsvqa_dataset.json                                    manifest

Conventions. World space is nibabel's RAS+: +x = patient's Right, +y = Anterior, +z = Superior,
so the patient's LEFT lung has the SMALLER x. Anatomy is built on a canonical RAS voxel grid
(array axis 0 increases toward the patient's right), then flipped/permuted to the storage
orientation with the matching affine; ``nibabel.as_closest_canonical`` gives the RAS array back.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Sequence

import nibabel as nib
import numpy as np
from nibabel import orientations as nio

# the layout we write, and the benchmark's six category names
from adapters.datasets.upstream import CATEGORIES, CATEGORIES_JSON, DATASET_JSON, MANIFEST_JSON, ct_rate_folder

LAT, LON, AP, ML, ADJ, EXT = CATEGORIES

# v1: the anatomy of situs solitus in every volume, so a third of its questions (heart on the left,
# three right lobes, ...) have one answer everywhere and a question-only model scores well.
# v2: the same generator and measurements, but every volume is mirrored left-right with p = 0.5
# (situs inversus totalis) and the questions whose answer is fixed by anatomy even then (front-back
# constants, a midline trachea) are not asked. v1 stays what it was, seed for seed.
GENERATORS = {1: "ctsvqa.phantom v1", 2: "ctsvqa.phantom v2"}
VERSIONS = tuple(GENERATORS)
LATEST = 2

# Label-map ids. Anatomy < 100; a finding instance gets FINDING_BASE[kind] + k (k = 0, 1, ...),
# so the kind of any finding voxel can be read off its id alone.
LABELS: dict[str, int] = {
    "background": 0, "body": 1, "fat": 2, "muscle": 3,
    "lung_rul": 4, "lung_rml": 5, "lung_rll": 6, "lung_lul": 7, "lung_lll": 8,
    "airway": 9, "heart": 10, "aorta": 11, "spine": 12, "rib": 13,
    "liver": 14, "stomach": 15, "spleen": 16,
    "nodule": 100, "mass": 120, "effusion": 140, "lymph_node": 160,
}
FINDING_KINDS = ("nodule", "mass", "effusion", "lymph_node")
FINDING_BASE = {k: LABELS[k] for k in FINDING_KINDS}
_FINDING_SPAN = 20

LOBES = ("RUL", "RML", "RLL", "LUL", "LLL")
LOBE_LABEL = {"RUL": 4, "RML": 5, "RLL": 6, "LUL": 7, "LLL": 8}
LOBE_OF_LABEL = {v: k for k, v in LOBE_LABEL.items()}
LOBE_TEXT = {"RUL": "right upper lobe", "RML": "right middle lobe", "RLL": "right lower lobe",
             "LUL": "left upper lobe", "LLL": "left lower lobe",
             "LML": "left middle lobe"}                 # situs inversus: the three-lobed lung is the left
# Label ids name a lobe by its tier in its lung (4-6: the three-lobed lung, 7-8: the two-lobed one);
# its side is read from where it lies, which situs inversus swaps.
LOBE_TIER = {4: "upper", 5: "middle", 6: "lower", 7: "upper", 8: "lower"}
MIRROR_SITE = {"RUL": "LUL", "RML": "LML", "RLL": "LLL", "LUL": "RUL", "LLL": "RLL", "LML": "RML",
               "right paratracheal": "left paratracheal", "left paratracheal": "right paratracheal",
               "right hilar": "left hilar", "left hilar": "right hilar",
               "left": "right", "right": "left"}
LOBE_SIDE = {"RUL": "right", "RML": "right", "RLL": "right", "LUL": "left", "LLL": "left"}
RIGHT_LOBES = (4, 5, 6)
LEFT_LOBES = (7, 8)
LN_SITES = ("prevascular", "right paratracheal", "subcarinal", "right hilar", "left hilar")
LN_SITES_V2 = ("right paratracheal", "right hilar", "left hilar")
EFFUSION_SIDES = ("left", "right", "bilateral")
FINDING_SITES = {"nodule": LOBES, "mass": LOBES, "effusion": EFFUSION_SIDES, "lymph_node": LN_SITES}

# Storage orientations, cycled per case. "LPS" is what DICOM->NIfTI converters (and CT-RATE)
# write: affine diag(-sx, -sy, sz). "PLS" swaps the first two array axes, so even code that
# handles flips but assumes (x, y, z) axis order is caught.
ORIENTATIONS = ("LPS", "RAS", "LAI", "PLS")
_WORLD_AXIS = {"L": 0, "R": 0, "P": 1, "A": 1, "I": 2, "S": 2}


def finding_kind(label_id: int) -> str | None:
    for kind, base in FINDING_BASE.items():
        if base <= label_id < base + _FINDING_SPAN:
            return kind
    return None


@dataclass
class Finding:
    kind: str                   # nodule | mass | effusion | lymph_node
    label_id: int               # its id in the label map
    lobe_or_site: str           # RUL..LLL, "pleural", or a lymph-node station ("subcarinal", ...)
    side: str                   # left | right | bilateral | midline  (as intended at generation)
    center_ras: tuple[float, float, float]   # intended centre, world mm (effusion: centroid)
    diameter_mm: float          # intended sphere diameter (effusion: maximal thickness)
    hu: float
    calcified: bool = False


@dataclass
class PhantomCase:
    volume: str                 # "valid_1001_a_1.nii.gz"
    path: Path
    labels_path: Path
    orientation: str            # storage axis codes, e.g. "LPS"
    findings: list[Finding]
    qa: list[dict]              # {"question", "answer", "category": [...]}
    shape: tuple[int, int, int] = (0, 0, 0)          # stored array shape
    spacing: tuple[float, float, float] = (0.0, 0.0, 0.0)   # RAS x, y, z voxel size (mm)
    slope_inter: tuple[float, float] = (1.0, 0.0)
    situs: str = "solitus"      # or "inversus" (v2 mirrors half the bodies)


class PhantomArrays(NamedTuple):
    """One case in memory. *_ras arrays are in canonical RAS voxel order; `stored`,
    `labels_stored` and `affine` are exactly what goes to disk."""
    hu_ras: np.ndarray          # int16 HU
    labels_ras: np.ndarray      # uint8
    affine_ras: np.ndarray
    stored: np.ndarray          # int16 raw values (HU, or HU + 1024 when slope/inter = 1/-1024)
    labels_stored: np.ndarray
    affine: np.ndarray
    orientation: str
    slope_inter: tuple[float, float]
    findings: list[Finding]
    inversus: bool = False      # mirrored left-right (v2)


@dataclass(frozen=True)
class _SizeSpec:
    n_xy: int
    xy: tuple[float, float]     # in-plane spacing range (mm)
    z: tuple[float, ...]        # slice spacings to choose from (mm)
    nz: tuple[int, int]         # slice-count bounds
    chunk: int                  # slices painted at once (bounds temporary memory)


SIZES = {
    "small": _SizeSpec(96, (3.5, 4.0), (5.0, 5.5, 6.0), (48, 64), 64),
    "full": _SizeSpec(512, (0.66, 0.8), (1.0, 1.25, 1.5), (200, 300), 24),
}

# Base HU per label; the aorta's value is set per case (with or without contrast).
_HU = {"body": 35, "fat": -100, "muscle": 45, "lung": -860, "airway": -995, "heart": 40,
       "spine": 230, "rib": 320, "liver": 60, "stomach": 22, "spleen": 48, "effusion": 10}


# ------------------------------------------------------------------------------------------
# Case geometry: every random number of a case is drawn here, in a fixed order.
# ------------------------------------------------------------------------------------------

@dataclass
class _Anatomy:
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    fov_c: tuple[float, float]          # world x, y of the field-of-view centre
    fov_r: float
    bx: float                           # body centre (world x, y): the midline is x = bx
    by: float
    a0: float                           # body half-width / half-depth
    b0: float
    fat: float
    mus: float
    h_left: float                       # diaphragm dome apex heights above the lowest slice
    h_right: float
    dome_c: float
    h_apex: float
    band: float                         # half-width of the mediastinum between the lungs
    ob_r: float                         # oblique fissure height at v = 0 (right, left)
    ob_l: float
    ob_k: float                         # its slope (fissure lower anteriorly)
    hz_r: float                         # right horizontal fissure height
    heart_c: tuple[float, float, float]
    heart_r: tuple[float, float, float]
    v_vb: float                         # vertebral body centre v
    r_vb: tuple[float, float]
    disc_phase: float
    v_tr: float                         # trachea centre v, radius, carina height
    r_tr: float
    h_car: float
    h_arch: float
    asc: tuple[float, float, float]     # ascending aorta (u, v, r)
    desc: tuple[float, float, float]
    rib_pitch: float
    rib_drop: float
    aorta_hu: float
    lung_tex: list                      # (amp, kx, ky, kz, px, py, pz) terms
    chunk: int                          # slices painted at once

    @property
    def extent(self) -> float:
        return (self.shape[2] - 1) * self.spacing[2]

    @property
    def ac(self) -> float:
        return self.a0 - self.fat - self.mus

    @property
    def bc(self) -> float:
        return self.b0 - self.fat - self.mus

    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """World coordinates (mm) of voxel centres along each RAS axis."""
        return tuple(o + s * np.arange(n) for o, s, n in zip(self.origin, self.spacing, self.shape))

    def affine(self) -> np.ndarray:
        aff = np.diag([*self.spacing, 1.0])
        aff[:3, 3] = self.origin
        return aff


def _sample_anatomy(rng: np.random.Generator, size: str) -> _Anatomy:
    spec = SIZES[size]
    n = spec.n_xy
    sxy = round(float(rng.uniform(*spec.xy)), 2)
    sz = float(spec.z[int(rng.integers(len(spec.z)))])
    nz = int(np.clip(round(float(rng.uniform(280, 330)) / sz) + 1, *spec.nz))
    fov_c = (round(float(rng.uniform(-20, 20)), 1), round(float(rng.uniform(-30, 10)), 1))
    origin = (fov_c[0] - (n - 1) / 2 * sxy, fov_c[1] - (n - 1) / 2 * sxy, round(float(rng.uniform(-420, -120)), 1))
    fov_r = n * sxy / 2
    dx, dy = float(rng.uniform(-8, 8)), float(rng.uniform(-10, 4))
    a0 = min(float(rng.uniform(138, 152)), fov_r - 12 - abs(dx))
    b0 = a0 * float(rng.uniform(0.68, 0.74))
    fat, mus = float(rng.uniform(10, 20)), float(rng.uniform(9, 13))
    extent = (nz - 1) * sz
    h_left = float(rng.uniform(0.24, 0.30)) * extent
    h_right = h_left + float(rng.uniform(14, 24))          # the liver lifts the right dome
    bc = b0 - fat - mus
    v_vb = -bc + float(rng.uniform(24, 28))
    v_tr = v_vb + float(rng.uniform(42, 48))
    # the heart is anterior (in front of the trachea's plane) and its top lies well below the
    # carina, leaving the subcarinal space between the main bronchi free
    heart_c = (-float(rng.uniform(24, 34)), v_tr + float(rng.uniform(18, 24)), h_left + float(rng.uniform(44, 50)))
    heart_r = (float(rng.uniform(50, 57)), float(rng.uniform(35, 39)), float(rng.uniform(46, 52)))
    h_car = heart_c[2] + heart_r[2] + float(rng.uniform(18, 26))
    ob_r = float(rng.uniform(0.48, 0.54)) * extent
    lung_tex = [(float(rng.uniform(8, 14)), *(float(x) for x in rng.uniform(2 * math.pi / 40, 2 * math.pi / 14, 3)),
                 *(float(x) for x in rng.uniform(0, 2 * math.pi, 3))) for _ in range(3)]
    return _Anatomy(
        shape=(n, n, nz), spacing=(sxy, sxy, sz), origin=origin, fov_c=fov_c, fov_r=fov_r,
        bx=fov_c[0] + dx, by=fov_c[1] + dy, a0=a0, b0=b0, fat=fat, mus=mus,
        h_left=h_left, h_right=h_right, dome_c=0.008, h_apex=extent - float(rng.uniform(8, 22)),
        band=float(rng.uniform(18, 23)), ob_r=ob_r, ob_l=ob_r + float(rng.uniform(0, 12)),
        ob_k=float(rng.uniform(0.8, 1.05)), hz_r=ob_r + float(rng.uniform(2, 10)),
        heart_c=heart_c, heart_r=heart_r, v_vb=v_vb, r_vb=(float(rng.uniform(16, 19)), float(rng.uniform(14, 16))),
        disc_phase=float(rng.uniform(0, 27)), v_tr=v_tr, r_tr=float(rng.uniform(8, 10)), h_car=h_car,
        h_arch=h_car + float(rng.uniform(15, 22)),
        asc=(float(rng.uniform(10, 15)), v_tr + float(rng.uniform(21, 26)), float(rng.uniform(13, 15))),
        desc=(-float(rng.uniform(22, 27)), v_vb + float(rng.uniform(25, 30)), float(rng.uniform(11, 13))),
        rib_pitch=float(rng.uniform(22, 26)), rib_drop=float(rng.uniform(60, 80)),
        aorta_hu=float(rng.choice([45.0, 160.0])), lung_tex=lung_tex, chunk=spec.chunk,
    )


# ------------------------------------------------------------------------------------------
# Label map: analytic shapes painted on the RAS grid. In-plane shapes are 2-D arrays computed
# once; z only enters through 1-D parameters, so every 3-D test is one broadcast comparison.
# ------------------------------------------------------------------------------------------

def _ell(U, V, cu, cv, ru, rv):
    return ((U - cu) / ru) ** 2 + ((V - cv) / rv) ** 2


def _lung_scale2(g: _Anatomy, h: np.ndarray) -> np.ndarray:
    """Squared in-plane scale of the lungs: 1 up to 62 % of the scan, then a dome to the apex."""
    h0 = 0.62 * g.extent
    t = np.clip((h - h0) / (g.h_apex - h0), 0, None)
    return np.where(h > g.h_apex, -1.0, 1.0 - t ** 2)


def _build_labels(g: _Anatomy) -> np.ndarray:
    nx, ny, nz = g.shape
    xs, ys, zs = g.axes()
    u, v, hh = xs - g.bx, ys - g.by, zs - zs[0]
    U, V = u[:, None], v[None, :]
    ac, bc = g.ac, g.bc
    L = LABELS

    # in-plane (2-D) layers
    body = _ell(U, V, 0, 0, g.a0, g.b0) <= 1
    inner = _ell(U, V, 0, 0, g.a0 - g.fat, g.b0 - g.fat) <= 1
    cav = _ell(U, V, 0, 0, ac, bc) <= 1
    half_w = (ac - g.band) / 2
    q_r = _ell(U, V, g.band + half_w, -5, half_w + 12, bc + 10)
    q_l = _ell(U, V, -(g.band + half_w), -5, half_w + 12, bc + 10)
    lung_r2 = cav & (U > g.band)
    lung_l2 = cav & (U < -g.band)
    dome_u = 0.55 * ac
    dia = np.where(U >= 0, g.h_right - g.dome_c * ((U - dome_u) ** 2 + V ** 2),
                   g.h_left - g.dome_c * ((U + dome_u) ** 2 + V ** 2)).astype(np.float32)
    organ = np.where(U > -25, L["liver"], np.where((U < -45) & (V < -15), L["spleen"], L["stomach"])).astype(np.uint8)
    heart_u, heart_v, heart_h = g.heart_c
    q_heart = _ell(U, V, heart_u, heart_v, g.heart_r[0], g.heart_r[1])
    trachea = _ell(U, V, 0, g.v_tr, g.r_tr, g.r_tr) <= 1
    asc = _ell(U, V, g.asc[0], g.asc[1], g.asc[2], g.asc[2]) <= 1
    desc = _ell(U, V, g.desc[0], g.desc[1], g.desc[2], g.desc[2]) <= 1
    vb = _ell(U, V, 0, g.v_vb, g.r_vb[0], g.r_vb[1]) <= 1
    canal_v = g.v_vb - g.r_vb[1] - 7
    d_canal = np.sqrt(U ** 2 + (V - canal_v) ** 2)
    canal = d_canal <= 7
    posterior = inner & (((d_canal > 7) & (d_canal <= 12) & (V <= canal_v + 3))
                         | ((np.abs(U) < 4) & (V < canal_v - 9) & (V > canal_v - 28))
                         | ((np.abs(V - canal_v) < 4) & (np.abs(U) > 8) & (np.abs(U) < 26)))
    paraspinal = inner & ((_ell(U, V, 22, canal_v - 12, 16, 13) <= 1) | (_ell(U, V, -22, canal_v - 12, 16, 13) <= 1))
    # ribs: a ring just outside the cavity; theta = 0 at the posterior midline, pi anteriorly
    rib_ring = ~cav & (_ell(U, V, 0, 0, ac + 8, bc + 8) <= 1)
    ri, rj = np.nonzero(rib_ring)
    theta = np.arctan2(np.abs(u[ri]) / ac, -v[rj] / bc)
    rib_ok = (theta > 0.12 * np.pi) & (theta < 0.78 * np.pi)
    ri, rj, theta = ri[rib_ok], rj[rib_ok], theta[rib_ok]
    rib_h0 = g.h_apex - 5 - 11 * g.rib_pitch

    out = np.zeros(g.shape, np.uint8)
    lobes_r = np.array([L["lung_rll"], L["lung_rml"], L["lung_rul"]], np.uint8)
    lobes_l = np.array([L["lung_lll"], L["lung_lul"]], np.uint8)
    for k0 in range(0, nz, g.chunk):
        k1 = min(nz, k0 + g.chunk)
        h = hh[k0:k1]
        H = h[None, None, :]
        lab = out[:, :, k0:k1]
        lab[body] = L["body"]
        lab[body & ~inner] = L["fat"]
        lab[inner & ~cav] = L["muscle"]
        # lungs: inside the cavity, outside the mediastinal band, above the diaphragm, below the apex
        s2 = _lung_scale2(g, h)[None, None, :].astype(np.float32)
        above = H > dia[:, :, None]
        # lobes: below the oblique fissure = lower lobe; right upper/middle split by the horizontal one
        fis_r = (g.ob_r - g.ob_k * v)[None, :, None]
        fis_l = (g.ob_l - g.ob_k * v)[None, :, None]
        lobe_r = lobes_r[np.where(H < fis_r, 0, np.where(H < g.hz_r, 1, 2))]
        lobe_l = lobes_l[np.where(H < fis_l, 0, 1)]
        in_r = lung_r2[:, :, None] & (q_r[:, :, None] < s2) & above
        in_l = lung_l2[:, :, None] & (q_l[:, :, None] < s2) & above
        np.copyto(lab, np.broadcast_to(lobe_r, lab.shape), where=in_r)
        np.copyto(lab, np.broadcast_to(lobe_l, lab.shape), where=in_l)
        # under the domes: liver on the right, stomach and spleen on the left
        np.copyto(lab, organ[:, :, None], where=cav[:, :, None] & ~above)
        # heart: an ellipsoid sitting on the left dome, anterior and left of the midline
        qz = ((h - heart_h) / g.heart_r[2]) ** 2
        soft = (lab == L["body"]) | ((lab >= 4) & (lab <= 8))
        lab[(q_heart[:, :, None] + qz[None, None, :] <= 1) & soft] = L["heart"]
        lab[trachea[:, :, None] & (H >= g.h_car)] = L["airway"]
        soft = (lab == L["body"]) | ((lab >= 4) & (lab <= 8)) | (lab == L["heart"])
        heart_top = heart_h + g.heart_r[2]
        lab[asc[:, :, None] & (H >= heart_top - 12) & (H <= g.h_arch) & soft] = L["aorta"]
        lab[desc[:, :, None] & (H <= g.h_arch) & soft] = L["aorta"]
        lab[paraspinal] = L["muscle"]
        disc = ((h - g.disc_phase) % 27.0) < 4.0
        lab[vb[:, :, None] & ~disc[None, None, :]] = L["spine"]
        lab[vb[:, :, None] & disc[None, None, :]] = L["body"]
        lab[canal] = L["body"]
        lab[posterior] = L["spine"]
        # ribs descend anteriorly: rib k sits at height h0 + k*pitch - drop*theta/pi
        phase = h[None, :] - rib_h0 + g.rib_drop * theta[:, None] / np.pi
        k = np.floor(phase / g.rib_pitch)
        is_rib = (phase - k * g.rib_pitch < 9.0) & (k >= 0) & (k < 12)
        sub = lab[ri, rj, :]
        sub[is_rib] = L["rib"]
        lab[ri, rj, :] = sub

    # structures that run obliquely through slices: main bronchi and the aortic arch
    axes = (xs, ys, zs)
    z0 = zs[0]

    def w(uu, vv, h):  # body-relative -> world
        return (g.bx + uu, g.by + vv, z0 + h)
    car = w(0, g.v_tr, g.h_car + g.r_tr * 0.5)
    bronchi = [(car, w(34, g.v_tr - 8, g.h_car - 40), 7.0), (car, w(-50, g.v_tr - 8, g.h_car - 42), 6.5)]
    allowed = np.zeros(256, bool)
    allowed[[L["body"], *range(4, 9)]] = True
    for p0, p1, r in bronchi:
        _paint_capsule(out, axes, p0, p1, r, L["airway"], allowed)
    au, av, ar = g.asc
    du, dv, dr = g.desc
    arch = [w(au, av, g.h_arch), w(-14, av - 4, g.h_arch + 14), w(du - 8, (av + dv) / 2 - 4, g.h_arch + 12),
            w(du, dv, g.h_arch)]
    allowed[L["heart"]] = True
    for p0, p1 in zip(arch[:-1], arch[1:]):
        _paint_capsule(out, axes, p0, p1, (ar + dr) / 2, L["aorta"], allowed)
    return out


def _bbox(axes, lo, hi):
    """Index slices of the voxels whose centres lie in the world box [lo, hi]."""
    out = []
    for ax, a, b in zip(axes, lo, hi):
        i0 = int(np.searchsorted(ax, a, "left"))
        i1 = int(np.searchsorted(ax, b, "right"))
        out.append(slice(max(i0, 0), min(i1, len(ax))))
    return tuple(out)


def _paint_capsule(lab, axes, p0, p1, r, value, allowed):
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    box = _bbox(axes, np.minimum(p0, p1) - r, np.maximum(p0, p1) + r)
    X = axes[0][box[0]][:, None, None] - p0[0]
    Y = axes[1][box[1]][None, :, None] - p0[1]
    Z = axes[2][box[2]][None, None, :] - p0[2]
    d = p1 - p0
    t = np.clip((X * d[0] + Y * d[1] + Z * d[2]) / float(d @ d), 0, 1)
    inside = (X - t * d[0]) ** 2 + (Y - t * d[1]) ** 2 + (Z - t * d[2]) ** 2 <= r * r
    sub = lab[box]
    sub[inside & allowed[sub]] = value


def _sphere(axes, center, r, pad=0.0):
    """(box, mask of voxels within r of centre, squared distances) on the world box around it."""
    c = np.asarray(center, float)
    box = _bbox(axes, c - r - pad, c + r + pad)
    X = axes[0][box[0]][:, None, None] - c[0]
    Y = axes[1][box[1]][None, :, None] - c[1]
    Z = axes[2][box[2]][None, None, :] - c[2]
    d2 = X * X + Y * Y + Z * Z
    return box, d2 <= r * r, d2


# ------------------------------------------------------------------------------------------
# Findings: placed by rejection sampling against the label map, so they never straddle a
# fissure, never overlap each other, and pleural contact is real voxel contact.
# ------------------------------------------------------------------------------------------

_LUNGISH = np.zeros(256, bool)          # parenchyma and what lives inside it
_LUNGISH[[*range(4, 10)]] = True
_LUNGISH[FINDING_BASE["nodule"]:FINDING_BASE["mass"] + _FINDING_SPAN] = True
_IS_FINDING = np.zeros(256, bool)
_IS_FINDING[100:] = True


def _side_of_lobe_labels(side: str) -> tuple[int, ...]:
    return RIGHT_LOBES if side == "right" else LEFT_LOBES


def _lung_z_range(lab: np.ndarray, side: str) -> tuple[int, int]:
    present = np.nonzero(np.isin(lab, _side_of_lobe_labels(side)).any(axis=(0, 1)))[0]
    return int(present[0]), int(present[-1])


def _rho(lab, axes, mid, i, j, k, side) -> float | None:
    """Position along the left-right line through voxel (i, j, k), from the mediastinal border
    (0) to the lateral pleura (1) of that lung."""
    row = lab[:, j, k]
    ids = _side_of_lobe_labels(side)
    inlung = np.isin(row, ids) | ((row >= 100) & (row < 140))
    sel = np.nonzero(inlung & ((axes[0] > mid) if side == "right" else (axes[0] < mid)))[0]
    if len(sel) < 2:
        return None
    dist = np.abs(axes[0][sel] - mid)
    lo, hi = float(dist.min()), float(dist.max())
    return (abs(axes[0][i] - mid) - lo) / max(hi - lo, 1e-6)


def _place_lesion(lab, g, axes, rng, kind, label_id, lobe, mode, version: int = 1) -> Finding | None:
    side = LOBE_SIDE[lobe]
    lobe_id = LOBE_LABEL[lobe]
    sxy, _, sz = g.spacing
    if kind == "nodule":
        diam = float(rng.uniform(max(3.0, 1.6 * sxy), 10.0))
        hu, calcified = (float(rng.uniform(350, 650)), True) if rng.random() < 0.3 else (float(rng.uniform(30, 55)), False)
    else:
        diam = float(rng.uniform(20.0, 40.0))
        hu, calcified = float(rng.uniform(30, 45)), False
    r = diam / 2
    z_lo, z_hi = _lung_z_range(lab, side)
    z_mid, z_ext = (axes[2][z_lo] + axes[2][z_hi]) / 2, axes[2][z_hi] - axes[2][z_lo]
    # the lobe's name should agree with the level question: upper lobes high, lower lobes low
    want = {"RUL": 1, "LUL": 1, "RLL": -1, "LLL": -1, "RML": 0}[lobe]
    st = (max(1, round(4 / sxy)), max(1, round(4 / sxy)), max(1, round(4 / sz)))
    cand = np.argwhere(lab[::st[0], ::st[1], ::st[2]] == lobe_id) * np.array(st)
    if len(cand) == 0:
        return None
    cand = cand[rng.permutation(len(cand))[:600]]
    mid = g.bx
    for m in (mode, "central" if mode == "peripheral" else "peripheral", "any"):
        for i, j, k in cand:
            c = np.array([axes[0][i], axes[1][j], axes[2][k]]) + rng.uniform(-0.5, 0.5, 3) * np.array(g.spacing)
            if want and (c[2] - z_mid) * want < (0.15 * z_ext + r if want > 0 else 0.12 * z_ext):
                continue
            rho = _rho(lab, axes, mid, i, j, k, side)
            if rho is None or (m == "peripheral" and rho < 0.72) or (m == "central" and rho > 0.28):
                continue
            box, inside, d2 = _sphere(axes, c, r, pad=2.5 * max(g.spacing))
            sub = lab[box]
            if _IS_FINDING[sub].any():            # keep a gap to other findings
                continue
            vals = sub[inside]
            n = len(vals)
            if n == 0:
                continue
            in_lobe = vals == lobe_id
            outside = ~np.isin(vals, (4, 5, 6, 7, 8, 9))
            # one voxel clear of other lobes and airways, so the lesion's surroundings name its lobe
            near = sub[d2 <= (r + max(g.spacing)) ** 2]
            if np.isin(near, [x for x in (4, 5, 6, 7, 8, 9) if x != lobe_id]).any() or in_lobe.sum() < 0.6 * n:
                continue
            if m == "peripheral" and outside.mean() < 0.03:
                continue
            if m == "central" and outside.any():
                continue
            # v2 (half its masses central): a central lesion keeps two voxels of lung from the
            # mediastinum, so it reads as a lesion and not as a bulge of the heart
            if version >= 2 and m == "central":
                clear = sub[d2 <= (r + 2 * max(g.spacing)) ** 2]
                if not np.isin(clear, (4, 5, 6, 7, 8, 9)).all():
                    continue
            # pleural-based lesions are clipped by the pleura: paint only the lobe's voxels
            sub[inside & (sub == lobe_id)] = label_id
            return Finding(kind, label_id, lobe, side, tuple(round(float(x), 2) for x in c), round(diam, 2), round(hu, 1), calcified)
    return None


def _place_lymph_node(lab, g, axes, rng, label_id, site) -> Finding | None:
    diam = float(rng.uniform(12.0, 20.0))
    r = diam / 2
    z0 = axes[2][0]
    allowed = np.zeros(256, bool)
    allowed[[LABELS["body"], LABELS["fat"], *range(4, 9)]] = True
    base = {
        "prevascular": (0.0, g.asc[1] + 22, g.h_arch - 4),
        "right paratracheal": (g.r_tr + 3 + r, g.v_tr, g.h_car + 22),
        "subcarinal": (-2.0, g.v_tr - 8, g.h_car - 18),
        "right hilar": (45.0, g.v_tr + 10, g.h_car - 38),
        "left hilar": (-52.0, g.v_tr + 10, g.h_car - 15),
    }[site]
    side = "right" if site.startswith("right") else "left" if site.startswith("left") else "midline"
    for _ in range(80):
        jit = rng.uniform(-3, 3, 3)
        c = np.array([g.bx + base[0] + jit[0], g.by + base[1] + jit[1], z0 + base[2] + jit[2]])
        box, inside, _ = _sphere(axes, c, r, pad=2.5 * max(g.spacing))
        sub = lab[box]
        if _IS_FINDING[sub].any():
            continue
        vals = sub[inside]
        ok = allowed[vals]
        if len(vals) == 0 or ok.mean() < 0.7:
            continue
        sub[inside & allowed[sub]] = label_id
        return Finding("lymph_node", label_id, site, side, tuple(round(float(x), 2) for x in c), round(diam, 2),
                       round(float(rng.uniform(30, 45)), 1))
    return None


def _paint_effusion(lab, g, axes, rng, label_id, side) -> Finding | None:
    """Free fluid in a supine patient lies in the dependent (posterior) pleural space: lung
    voxels behind a coronal plane whose depth shrinks from the lung base upward."""
    thick = float(rng.uniform(20.0, 40.0))
    sides = ("right", "left") if side == "bilateral" else (side,)
    v = axes[1] - g.by
    post = -g.bc
    hz = axes[2] - axes[2][0]
    for s in sides:
        k_lo, k_hi = _lung_z_range(lab, s)
        top = hz[k_lo] + 0.55 * (hz[k_hi] - hz[k_lo])
        frac = np.clip((top - hz) / max(top - hz[k_lo], 1e-6), 0, 1) ** 0.6
        depth = post + thick * frac                       # per slice: fluid where v < depth
        ks = np.nonzero(frac > 0)[0]
        if len(ks) == 0:
            continue
        sl = slice(int(ks[0]), int(ks[-1]) + 1)
        sub = lab[:, :, sl]
        m = np.isin(sub, _side_of_lobe_labels(s)) & (v[None, :, None] < depth[None, None, sl])
        sub[m] = label_id
    vox = np.argwhere(lab == label_id)
    if len(vox) == 0:
        return None
    c = tuple(round(float(axes[a][vox[:, a]].mean()), 2) for a in range(3))
    return Finding("effusion", label_id, "pleural", side, c, round(thick, 2), float(_HU["effusion"]))


def _check_plan(forced) -> list[tuple[str, str]]:
    plan = [tuple(p) for p in forced]
    for kind, site in plan:
        if site not in FINDING_SITES.get(kind, ()):
            raise ValueError(f"unknown finding {(kind, site)!r}; kinds and sites: {FINDING_SITES}")
    kinds = [k for k, _ in plan]
    # questions say "the nodule", "the mass": one finding per kind keeps them unambiguous
    if not plan or len(set(kinds)) != len(kinds):
        raise ValueError(f"give 1-4 findings, at most one per kind, got {plan!r}")
    return plan


def _place_findings(lab, g, rng, forced, version: int = 1) -> list[Finding]:
    axes = g.axes()
    if forced is None:
        k = int(rng.choice([1, 2, 3, 4], p=[0.25, 0.35, 0.25, 0.15]))
        kinds = sorted(rng.permutation(len(FINDING_KINDS))[:k])
        plan = []
        for ki in kinds:
            kind = FINDING_KINDS[ki]
            if kind in ("nodule", "mass"):
                plan.append((kind, LOBES[int(rng.integers(5))]))
            elif kind == "effusion":
                plan.append((kind, EFFUSION_SIDES[int(rng.integers(3))]))
            elif version == 1:
                plan.append((kind, LN_SITES[int(rng.integers(len(LN_SITES)))]))
            else:
                # v2: only the stations an image reader can see in a phantom without mediastinal fat
                # (a node bulging into the lung), paratracheal or hilar alike; mirroring sides them
                plan.append((kind, LN_SITES_V2[int(rng.choice(len(LN_SITES_V2), p=[0.5, 0.25, 0.25]))]))
    else:
        plan = _check_plan(forced)
    # effusion first (it replaces lung), then lesions inside what is left, then nodes
    order = {"effusion": 0, "mass": 1, "nodule": 2, "lymph_node": 3}
    plan.sort(key=lambda p: order[p[0]])
    findings, count = [], dict.fromkeys(FINDING_KINDS, 0)
    for kind, site in plan:
        label_id = FINDING_BASE[kind] + count[kind]
        if kind == "effusion":
            f = _paint_effusion(lab, g, axes, rng, label_id, site)
        elif kind == "lymph_node":
            f = _place_lymph_node(lab, g, axes, rng, label_id, site)
        else:
            # v1 put 70 % of masses at the pleura; v2 balances the central-or-peripheral answer
            p_peripheral = 0.7 if kind == "mass" and version == 1 else 0.5
            mode = "peripheral" if rng.random() < p_peripheral else "central"
            f = _place_lesion(lab, g, axes, rng, kind, label_id, site, mode, version)
        if f is None:
            if forced is not None:
                raise RuntimeError(f"could not place forced finding {kind} at {site}")
            continue
        count[kind] += 1
        findings.append(f)
    if not findings:   # every case has at least one finding
        f = _place_lesion(lab, g, axes, rng, "nodule", FINDING_BASE["nodule"], "RLL", "any")
        if f is None:
            raise RuntimeError("could not place any finding")
        findings.append(f)
    return findings


# ------------------------------------------------------------------------------------------
# Intensities
# ------------------------------------------------------------------------------------------

def _hu_from_labels(lab: np.ndarray, g: _Anatomy, findings: list[Finding], rng: np.random.Generator) -> np.ndarray:
    """Base HU per label, lung texture, bone cortex, Gaussian noise, circular FOV; int16."""
    L = LABELS
    table = np.full(256, -1000.0, np.float32)
    for name in ("body", "fat", "muscle", "airway", "heart", "spine", "rib", "liver", "stomach", "spleen"):
        table[L[name]] = _HU[name]
    table[4:9] = _HU["lung"]
    table[L["aorta"]] = g.aorta_hu
    for f in findings:
        table[f.label_id] = f.hu
    sigma = np.full(256, 16.0, np.float32)      # noise: 16 HU inside the body, 10 HU in air
    sigma[0] = 10.0
    xs, ys, zs = g.axes()
    # lung texture: a few separable sinusoids (smooth, deterministic, cheap: 2-D part x 1-D part)
    tex2 = [(amp * np.sin(kx * xs + px)[:, None] * np.sin(ky * ys + py)[None, :]).astype(np.float32)
            for amp, kx, ky, kz, px, py, pz in g.lung_tex]
    tex1 = [np.sin(kz * zs + pz).astype(np.float32) for amp, kx, ky, kz, px, py, pz in g.lung_tex]
    # outside the circular reconstruction field of view the scanner writes -1024
    outside_fov = ((xs - g.fov_c[0]) ** 2)[:, None] + ((ys - g.fov_c[1]) ** 2)[None, :] > g.fov_r ** 2
    out = np.empty(lab.shape, np.int16)
    for k0 in range(0, lab.shape[2], g.chunk):         # chunks keep temporaries small and cached
        sl = slice(k0, min(k0 + g.chunk, lab.shape[2]))
        lb = lab[:, :, sl]
        hu = table[lb]
        tex = sum(t2[:, :, None] * t1[None, None, sl] for t2, t1 in zip(tex2, tex1))
        np.add(hu, tex, out=hu, where=(lb >= 4) & (lb <= 8))
        # bone: dense cortex where a bone voxel touches non-bone in-plane, trabecular inside
        bone = (lb == L["spine"]) | (lb == L["rib"])
        edge = np.zeros_like(bone)
        edge[1:] |= bone[1:] & ~bone[:-1]
        edge[:-1] |= bone[:-1] & ~bone[1:]
        edge[:, 1:] |= bone[:, 1:] & ~bone[:, :-1]
        edge[:, :-1] |= bone[:, :-1] & ~bone[:, 1:]
        np.add(hu, np.float32(520.0), out=hu, where=edge)
        noise = rng.standard_normal(lb.shape, dtype=np.float32)
        noise *= sigma[lb]
        hu += noise
        hu[outside_fov] = -1024.0
        np.clip(hu, -1024, 3071, out=hu)
        np.rint(hu, out=hu)
        out[:, :, sl] = hu
    return out


# ------------------------------------------------------------------------------------------
# Orientation and storage
# ------------------------------------------------------------------------------------------

def _to_orientation(arr_ras: np.ndarray, affine_ras: np.ndarray, codes: str) -> tuple[np.ndarray, np.ndarray]:
    """Reorder a canonical RAS array to axis codes `codes`; return (array, its affine)."""
    t = nio.ornt_transform(nio.axcodes2ornt(("R", "A", "S")), nio.axcodes2ornt(tuple(codes)))
    arr = np.ascontiguousarray(nio.apply_orientation(arr_ras, t))
    return arr, affine_ras @ nio.inv_ornt_aff(t, arr_ras.shape)


def situs_inversus(index: int, seed: int, version: int) -> bool:
    """v2 mirrors a volume with p = 0.5, from its own stream (v1's three streams stay untouched)."""
    if version < 2:
        return False
    return bool(np.random.default_rng(np.random.SeedSequence([int(seed), int(index), 0x5175])).random() < 0.5)


def _mirror(arr_ras: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(arr_ras[::-1])


def _mirror_finding(f: Finding, affine_ras: np.ndarray, nx: int) -> Finding:
    x0, sx = affine_ras[0, 3], affine_ras[0, 0]
    cx, cy, cz = f.center_ras
    return Finding(f.kind, f.label_id, MIRROR_SITE.get(f.lobe_or_site, f.lobe_or_site), MIRROR_SITE.get(f.side, f.side),
                   (round(float(2 * x0 + (nx - 1) * sx - cx), 2), cy, cz), f.diameter_mm, f.hu, f.calcified)


def make_case(index: int, seed: int, size: str = "small", orientation: str | None = None,
              findings: Sequence[tuple[str, str]] | None = None, rescaled: bool | None = None,
              version: int = 1, inversus: bool | None = None) -> PhantomArrays:
    """Build one case in memory. `findings` forces the finding list, e.g. [("nodule", "LLL"),
    ("effusion", "bilateral"), ("lymph_node", "subcarinal")]; otherwise 1-4 random findings.
    Orientation cycles through ORIENTATIONS and the slope/intercept convention alternates with
    `index` unless given. `version` 2 mirrors the body left-right (situs inversus) with p = 0.5, or
    as `inversus` says; forced findings are then named as they end up (a mirrored case's
    three-lobed lung is the left: "LML" is its middle lobe)."""
    if version not in GENERATORS:
        raise ValueError(f"phantom version must be one of {list(GENERATORS)}, got {version!r}")
    mirrored = situs_inversus(index, seed, version) if inversus is None else bool(inversus)
    if findings is not None and mirrored:
        findings = [(k, MIRROR_SITE.get(site, site)) for k, site in findings]
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    codes = orientation or ORIENTATIONS[index % len(ORIENTATIONS)]
    if len(codes) != 3 or sorted(_WORLD_AXIS.get(c, -1) for c in codes) != [0, 1, 2]:
        raise ValueError(f"orientation must be three axis codes, one of L/R, A/P, S/I each, got {codes!r}")
    ss = np.random.SeedSequence([int(seed), int(index), 0x7C75])
    rng_geo, rng_find, rng_noise = (np.random.default_rng(s) for s in ss.spawn(3))
    g = _sample_anatomy(rng_geo, size)
    lab = _build_labels(g)
    found = _place_findings(lab, g, rng_find, findings, version)
    hu = _hu_from_labels(lab, g, found, rng_noise)
    aff_ras = g.affine()
    if mirrored:
        hu, lab = _mirror(hu), _mirror(lab)
        found = [_mirror_finding(f, aff_ras, lab.shape[0]) for f in found]
    hu_st, aff = _to_orientation(hu, aff_ras, codes)
    lab_st, _ = _to_orientation(lab, aff_ras, codes)
    # CT-RATE ships both conventions: raw HU (1/0), or HU + 1024 with slope 1 / intercept -1024
    rescaled = bool(index % 2) if rescaled is None else rescaled
    slope_inter = (1.0, -1024.0) if rescaled else (1.0, 0.0)
    stored = (hu_st + np.int16(1024)).astype(np.int16) if rescaled else hu_st
    return PhantomArrays(hu, lab, aff_ras, stored, lab_st, aff, codes, slope_inter, found, mirrored)


def _nifti(data: np.ndarray, affine: np.ndarray, slope_inter=(1.0, 0.0)) -> nib.Nifti1Image:
    img = nib.Nifti1Image(data, affine)
    hdr = img.header
    hdr.set_data_dtype(data.dtype)
    hdr.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    hdr.set_slope_inter(*slope_inter)
    return img


def save_case(arrays: PhantomArrays, volume_path: Path, labels_path: Path) -> None:
    """Write the stored arrays; nibabel's gzip writer is deterministic (mtime 0, no file name)."""
    volume_path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(_nifti(arrays.stored, arrays.affine, arrays.slope_inter), str(volume_path))
    nib.save(_nifti(arrays.labels_stored, arrays.affine), str(labels_path))


def volume_name(index: int) -> str:
    return f"valid_{1001 + index}_a_1.nii.gz"


def dataset_name(size: str, seed: int, version: int = 1) -> str:
    return f"phantom-{size}-s{seed}" if version == 1 else f"phantom-v{version}-{size}-s{seed}"


def generate(out_dir: Path, n: int, seed: int, size: str = "small", version: int = 1) -> list[PhantomCase]:
    """Write n cases plus the upstream-layout JSON files under out_dir; return the cases."""
    if version not in GENERATORS:
        raise ValueError(f"phantom version must be one of {list(GENERATORS)}, got {version!r}")
    out_dir = Path(out_dir)
    cases = []
    for index in range(n):
        arrays = make_case(index, seed, size, version=version)
        name = volume_name(index)
        stem = name[: -len(".nii.gz")]
        folder = out_dir / "volumes" / ct_rate_folder(name)
        path, labels_path = folder / name, folder / f"{stem}_labels.nii.gz"
        save_case(arrays, path, labels_path)
        # the answers come from what was written: stored label array and its affine
        qa = qa_from_labels(arrays.labels_stored, arrays.affine, arrays.findings, variant=index, version=version)
        cases.append(PhantomCase(name, path, labels_path, arrays.orientation, arrays.findings, qa,
                                 tuple(arrays.stored.shape), tuple(float(s) for s in np.abs(np.diag(arrays.affine_ras))[:3]),
                                 arrays.slope_inter, "inversus" if arrays.inversus else "solitus"))
    _write_json(out_dir / DATASET_JSON,
                {c.volume: {"qa_pairs": [{"question": q["question"], "answer": q["answer"]} for q in c.qa]} for c in cases})
    _write_json(out_dir / CATEGORIES_JSON, {c.volume: {"qa_pairs": [dict(q) for q in c.qa]} for c in cases})
    _write_json(out_dir / MANIFEST_JSON, {
        "name": dataset_name(size, seed, version),
        "synthetic": True,
        "description": (f"{n} synthetic chest-CT phantoms ({size}); findings at known positions, every answer "
                        "measured from the saved label map in RAS world coordinates; storage orientation "
                        f"cycles through {', '.join(ORIENTATIONS)}, slope/intercept alternates 1/0 and 1/-1024."
                        + (" Each body is mirrored left-right (situs inversus) with p = 0.5." if version >= 2 else "")),
        "generator": GENERATORS[version],
        "n": n,
        "seed": seed,
        "size": size,
    })
    return cases


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# ------------------------------------------------------------------------------------------
# QA from the label map. Nothing below reads generation parameters: only the label array, its
# affine, and which label id is which finding kind.
# ------------------------------------------------------------------------------------------

class LabelGeometry:
    """A label map seen in RAS world millimetres, with per-axis label histograms so centroids,
    extents and bounding boxes of any label set cost no pass over the volume."""

    def __init__(self, labels: np.ndarray, affine: np.ndarray):
        labels = np.asanyarray(labels)
        ornt = nio.io_orientation(affine)
        self.lab = np.ascontiguousarray(nio.apply_orientation(labels, ornt)).astype(np.uint8, copy=False)
        aff = np.asarray(affine, float) @ nio.inv_ornt_aff(ornt, labels.shape)
        rot = aff[:3, :3]
        if not np.allclose(rot, np.diag(np.diag(rot)), atol=1e-6 * np.abs(rot).max()):
            raise ValueError("oblique affines are not supported")
        self.spacing = np.diag(rot).copy()       # all positive in RAS order
        self.axes = [aff[a, 3] + aff[a, a] * np.arange(n) for a, n in enumerate(self.lab.shape)]
        self.hist = [self._hist(a) for a in range(3)]
        body = self.hist[0][1:].sum(0)
        self.midline = float((self.axes[0] * body).sum() / body.sum())

    def _hist(self, axis: int) -> np.ndarray:
        n = self.lab.shape[axis]
        out = np.empty((256, n), np.int64)
        for i in range(n):
            out[:, i] = np.bincount(np.take(self.lab, i, axis=axis).ravel(), minlength=256)
        return out

    def count(self, ids) -> int:
        return int(self.hist[2][list(ids)].sum())

    def profile(self, ids, axis: int) -> np.ndarray:
        return self.hist[axis][list(ids)].sum(0)

    def centroid(self, ids) -> np.ndarray:
        return np.array([(self.axes[a] * self.profile(ids, a)).sum() / self.profile(ids, a).sum() for a in range(3)])

    def extent(self, ids, axis: int) -> tuple[float, float]:
        nz = np.nonzero(self.profile(ids, axis))[0]
        return float(self.axes[axis][nz[0]]), float(self.axes[axis][nz[-1]])

    def box(self, ids, pad: int = 0) -> tuple[slice, ...]:
        out = []
        for a in range(3):
            nz = np.nonzero(self.profile(ids, a))[0]
            out.append(slice(max(int(nz[0]) - pad, 0), min(int(nz[-1]) + 1 + pad, self.lab.shape[a])))
        return tuple(out)

    def voxels(self, label_id: int) -> np.ndarray:
        """World coordinates (n, 3) of the voxels of one label."""
        box = self.box([label_id])
        idx = np.nonzero(self.lab[box] == label_id)
        return np.stack([self.axes[a][idx[a] + box[a].start] for a in range(3)], axis=1)

    def index_of(self, point) -> tuple[int, int, int]:
        return tuple(int(np.clip(np.rint((p - ax[0]) / s), 0, len(ax) - 1))
                     for p, ax, s in zip(point, self.axes, self.spacing))

    def side(self, x: float, margin: float = 10.0) -> str | None:
        d = x - self.midline
        return "right" if d > margin else "left" if d < -margin else None

    def diameters(self, label_id: int) -> np.ndarray:
        """Extent (mm) along each world axis: voxel-centre span plus one voxel."""
        pts = self.voxels(label_id)
        return np.ptp(pts, axis=0) + self.spacing

    def shell_labels(self, label_id: int) -> np.ndarray:
        """Labels of the voxels face-adjacent to a label (its one-voxel outer shell)."""
        box = self.box([label_id], pad=1)
        sub = self.lab[box]
        m = sub == label_id
        dil = m.copy()
        for a in range(3):
            sl_hi = [slice(None)] * 3
            sl_lo = [slice(None)] * 3
            sl_hi[a], sl_lo[a] = slice(1, None), slice(None, -1)
            dil[tuple(sl_hi)] |= m[tuple(sl_lo)]
            dil[tuple(sl_lo)] |= m[tuple(sl_hi)]
        return sub[dil & ~m]


def _lobe_side(geo: LabelGeometry, lobe_id: int) -> str:
    return "right" if geo.centroid([lobe_id])[0] > geo.midline else "left"


def _lung_ids(geo: LabelGeometry, side: str) -> tuple[int, ...]:
    """The lobe labels of the lung that lies on `side` (measured: situs inversus puts the
    three-lobed lung on the left)."""
    ids = tuple(i for i in range(4, 9) if geo.count([i]) and _lobe_side(geo, i) == side)
    return ids or (RIGHT_LOBES if side == "right" else LEFT_LOBES)


def _lobe_of(geo: LabelGeometry, label_id: int) -> str | None:
    shell = geo.shell_labels(label_id)
    counts = np.bincount(shell, minlength=256)[4:9]
    if counts.sum() == 0:
        return None
    lobe_id = int(np.argmax(counts)) + 4
    return ("R" if _lobe_side(geo, lobe_id) == "right" else "L") + LOBE_TIER[lobe_id][0].upper() + "L"


def _lesion_facts(geo: LabelGeometry, label_id: int) -> dict:
    pts = geo.voxels(label_id)
    c = pts.mean(axis=0)
    facts: dict = {"centroid": c, "side": geo.side(c[0]), "lobe": _lobe_of(geo, label_id),
                   "diameter": float(geo.diameters(label_id).max())}
    side = facts["side"]
    if side is None:
        return facts
    lobes = _lung_ids(geo, side)
    # level: centroid height against the lung's craniocaudal span
    z_lo, z_hi = geo.extent(lobes, 2)
    t = (c[2] - (z_lo + z_hi) / 2) / (z_hi - z_lo)
    facts["level"] = "upper" if t > 0.1 else "lower" if t < -0.1 else None
    # depth: centroid against the lung's front-back span on the lesion's own slices
    zb = geo.box([label_id])[2]
    sub = geo.lab[:, :, zb]
    prof = np.isin(sub, lobes).sum(axis=(0, 2))
    nz = np.nonzero(prof)[0]
    y_lo, y_hi = geo.axes[1][nz[0]], geo.axes[1][nz[-1]]
    t = (c[1] - (y_lo + y_hi) / 2) / (y_hi - y_lo)
    facts["depth"] = "anterior" if t > 0.15 else "posterior" if t < -0.15 else None
    # centricity: along the left-right line through the centroid, mediastinal border = 0, lateral = 1
    i, j, k = geo.index_of(c)
    row = geo.lab[:, j, k]
    inlung = np.isin(row, lobes) | ((row >= 100) & (row < 140))
    xs = geo.axes[0]
    sel = inlung & ((xs > geo.midline) if side == "right" else (xs < geo.midline))
    facts["centricity"] = None
    if sel.sum() >= 2:
        dist = np.abs(xs[sel] - geo.midline)
        rho = (abs(c[0] - geo.midline) - dist.min()) / max(dist.max() - dist.min(), 1e-6)
        facts["centricity"] = "central" if rho < 1 / 3 else "peripheral" if rho > 2 / 3 else None
    # pleural contact: a face neighbour outside the parenchyma; else the clearance from the
    # centroid to the nearest non-parenchyma voxel minus the equivalent-sphere radius
    touching = bool((~_LUNGISH[geo.shell_labels(label_id)]).any())
    r_eq = (3 * len(pts) * float(np.prod(geo.spacing)) / (4 * math.pi)) ** (1 / 3)
    reach = r_eq + 15.0
    box = tuple(slice(max(int(np.floor((c[a] - reach - geo.axes[a][0]) / geo.spacing[a])), 0),
                      min(int(np.ceil((c[a] + reach - geo.axes[a][0]) / geo.spacing[a])) + 1, geo.lab.shape[a]))
                for a in range(3))
    out = np.nonzero(~_LUNGISH[geo.lab[box]])
    if len(out[0]):
        d = np.sqrt(sum((geo.axes[a][out[a] + box[a].start] - c[a]) ** 2 for a in range(3))).min()
    else:
        d = reach
    gap = float(d) - r_eq
    facts["adjacent"] = True if touching else False if gap > 5.0 else None
    return facts


def _carina_z(geo: LabelGeometry) -> float | None:
    """Lowest slice, walking down from the top, where the airway is still one narrow tube."""
    aw = [LABELS["airway"]]
    if geo.count(aw) == 0:
        return None
    box = geo.box(aw)
    sub = geo.lab[box] == LABELS["airway"]
    present = sub.any(axis=1)                                     # (x, z)
    xs = geo.axes[0][box[0]]
    zs = geo.axes[2][box[2]]
    spread = np.array([np.ptp(xs[present[:, k]]) + geo.spacing[0] if present[:, k].any() else np.nan
                       for k in range(present.shape[1])])
    top = spread[~np.isnan(spread)]
    width = float(np.median(top[-max(1, len(top) // 4):]))
    carina = None
    for k in range(len(zs) - 1, -1, -1):
        if np.isnan(spread[k]) or spread[k] > width + 6.0:
            break
        carina = float(zs[k])
    return carina


def _airway_at(geo: LabelGeometry, z: float) -> tuple[float, float, float] | None:
    """(x centroid, y centroid, x spread) of the airway on the slice nearest z."""
    k = geo.index_of((geo.axes[0][0], geo.axes[1][0], z))[2]
    ii, jj = np.nonzero(geo.lab[:, :, k] == LABELS["airway"])
    if len(ii) == 0:
        return None
    xs, ys = geo.axes[0][ii], geo.axes[1][jj]
    return float(xs.mean()), float(ys.mean()), float(np.ptp(xs) + geo.spacing[0])


def _node_facts(geo: LabelGeometry, label_id: int) -> dict:
    pts = geo.voxels(label_id)
    c = pts.mean(axis=0)
    dx = c[0] - geo.midline
    d = geo.diameters(label_id)
    facts = {"centroid": c, "short_axis": float(min(d[0], d[1])),
             "side": "midline" if abs(dx) < 10 else geo.side(c[0], 15.0)}
    carina = _carina_z(geo)
    facts["vs_carina"] = None if carina is None else "above" if c[2] > carina + 5 else "below" if c[2] < carina - 5 else None
    tr = _airway_at(geo, c[2]) if facts["vs_carina"] == "above" else None
    ref = tr or (_airway_at(geo, carina) if carina is not None else None)
    dy = None if ref is None else c[1] - ref[1]
    facts["vs_trachea"] = None
    if tr is not None and abs(dy) > 8:
        facts["vs_trachea"] = "anterior" if dy > 0 else "posterior"
    site = None
    if abs(dx) >= 35 and facts["side"] in ("left", "right"):
        site = f"{facts['side']} hilar"
    elif dy is not None and dy >= 20:
        site = "prevascular"
    elif facts["vs_carina"] == "below" and abs(dx) < 12:
        site = "subcarinal"
    elif facts["vs_carina"] == "above" and abs(dx) >= 12 and facts["side"] in ("left", "right"):
        site = f"{facts['side']} paratracheal"
    facts["site"] = site
    return facts


def _effusion_facts(geo: LabelGeometry, label_id: int) -> dict:
    pts = geo.voxels(label_id)
    right = pts[:, 0] > geo.midline
    n = len(pts)
    sides = [s for s, m in (("right", right), ("left", ~right)) if m.sum() >= 0.15 * n]
    facts: dict = {"sides": sides, "posterior": {}, "level": {}}
    for s in sides:
        p = pts[right] if s == "right" else pts[~right]
        lobes = _lung_ids(geo, s)
        lung_c = geo.centroid(lobes)
        facts["posterior"][s] = bool(p[:, 1].mean() < lung_c[1] - 10)
        z_lo, z_hi = geo.extent(lobes, 2)
        z_lo, z_hi = min(z_lo, p[:, 2].min()), max(z_hi, p[:, 2].max())
        t = (p[:, 2].mean() - (z_lo + z_hi) / 2) / (z_hi - z_lo)
        facts["level"][s] = "upper" if t > 0.1 else "lower" if t < -0.1 else None
        top = (p[:, 2].max() - z_lo) / (z_hi - z_lo)
        facts.setdefault("apex", []).append(True if top > 0.9 else False if top < 0.7 else None)
    # thickness: the longest front-back run of fluid in any (x, z) column
    box = geo.box([label_id])
    facts["thickness"] = float((geo.lab[box] == label_id).sum(axis=1).max() * geo.spacing[1])
    return facts


def _qa(question: str, answer: str, *cats: str) -> dict:
    return {"question": question.strip(), "answer": answer.strip(),
            "category": [c for c in CATEGORIES if c in cats]}


def _mm(x: float) -> str:
    return f"About {int(round(x))} mm."


def _lesion_qas(geo, k: str, label_id: int, variant: int) -> list[dict]:
    facts = _lesion_facts(geo, label_id)
    side, out = facts["side"], []
    if side:
        if variant % 2 == 0:
            out.append(_qa(f"Which side is the {k} on?", f"On the {side} side.", LAT))
        else:
            out.append(_qa(f"Which lung contains the {k}?", f"The {side} lung.", LAT, ADJ))
    if facts["lobe"]:
        out.append(_qa(f"In which lobe is the {k} located?", f"In the {LOBE_TEXT[facts['lobe']]}.", LAT, LON, ADJ))
    out.append(_qa(f"What is the largest diameter of the {k}?", _mm(facts["diameter"]), EXT))
    if side and facts.get("level"):
        out.append(_qa(f"Is the {k} in the upper or lower part of the lung?",
                       f"In the {facts['level']} part of the {side} lung.", LON, LAT))
    if facts.get("centricity"):
        out.append(_qa(f"Is the {k} central or peripheral?",
                       "It is peripheral, near the pleura." if facts["centricity"] == "peripheral"
                       else "It is central, near the hilum.", ML))
    if facts.get("adjacent") is not None:
        out.append(_qa(f"Is the {k} adjacent to the pleura?",
                       "Yes, it abuts the pleura." if facts["adjacent"] else "No, it is surrounded by lung parenchyma.", ADJ))
    if side and facts.get("depth"):
        out.append(_qa(f"Is the {k} in the anterior or posterior part of the lung?",
                       f"In the {facts['depth']} part of the {side} lung.", AP, LAT))
    return out


def _effusion_qas(geo, kind: str, label_id: int, variant: int) -> list[dict]:
    facts = _effusion_facts(geo, label_id)
    sides, out = facts["sides"], []
    if not sides:
        return out
    both = len(sides) == 2
    q = "the pleural effusion"
    out.append(_qa("Is the pleural effusion bilateral?",
                   "Yes, it is present on both sides." if both else f"No, it is on the {sides[0]} side only.", LAT))
    if all(facts["posterior"].values()):
        out.append(_qa("Where is the pleural effusion located?",
                       "In the dependent posterior parts of both hemithoraces." if both
                       else f"In the dependent posterior part of the {sides[0]} hemithorax.", AP, LAT, ADJ))
    out.append(_qa(f"What is the maximum thickness of {q}?", _mm(facts["thickness"]), EXT))
    levels = set(facts["level"].values())
    if len(levels) == 1 and None not in levels:
        lv = levels.pop()
        out.append(_qa(f"Is {q} in the upper or lower part of the hemithorax?",
                       f"In the {lv} parts of both hemithoraces." if both else f"In the {lv} part of the {sides[0]} hemithorax.", LON))
    apex = set(facts.get("apex", []))
    if len(apex) == 1 and None not in apex:
        out.append(_qa(f"Does {q} extend to the lung apex?",
                       "Yes, it extends up to the apex." if apex.pop() else "No, it is confined to the lower part of the hemithorax.",
                       EXT, LON))
    if variant % 2:
        out.insert(1, _qa(f"Which side is {q} on?", "On both sides." if both else f"On the {sides[0]} side.", LAT))
    return out


_SITE_TEXT = {
    "prevascular": ("In the prevascular region of the anterior mediastinum.", (AP, ML)),
    "right paratracheal": ("In the right paratracheal region.", (LAT, ML, ADJ)),
    "left paratracheal": ("In the left paratracheal region.", (LAT, ML, ADJ)),
    "subcarinal": ("In the subcarinal region, below the carina.", (LON, ML)),
    "right hilar": ("In the right hilar region.", (LAT, ML)),
    "left hilar": ("In the left hilar region.", (LAT, ML)),
}


def _node_qas(geo, kind: str, label_id: int, variant: int) -> list[dict]:
    facts = _node_facts(geo, label_id)
    q, out = "the enlarged lymph node", []
    if facts["site"]:
        text, cats = _SITE_TEXT[facts["site"]]
        out.append(_qa(f"Where is {q} located?", text, *cats))
    if facts["side"]:
        out.append(_qa(f"Which side is {q} on?",
                       "In the midline." if facts["side"] == "midline" else f"On the {facts['side']} side.", LAT, ML))
    out.append(_qa(f"What is the short-axis diameter of {q}?", _mm(facts["short_axis"]), EXT))
    if facts["vs_trachea"]:
        out.append(_qa(f"Is {q} anterior or posterior to the trachea?", f"{facts['vs_trachea'].capitalize()} to the trachea.", AP, ADJ))
    if facts["vs_carina"]:
        out.append(_qa(f"Is {q} above or below the carina?", f"{facts['vs_carina'].capitalize()} the carina.", LON))
    return out


# Normal-anatomy questions whose answer is the same in situs solitus and inversus: asked in v1 only.
SITUS_INDEPENDENT = frozenset({
    "Is the heart anterior or posterior to the spine?", "Where is the trachea located?",
    "Is the trachea anterior or posterior to the spine?", "Is the heart anterior or posterior to the descending aorta?"})
# Finding questions the generator can only answer one way (it asks them only when the answer is
# clear, and it is clear one way only): asked in v1 only.
ONE_ANSWER = frozenset({"Does the pleural effusion extend to the lung apex?", "Is the mass adjacent to the pleura?"})
NOT_IN_V2 = SITUS_INDEPENDENT | ONE_ANSWER


def _anatomy_qas(geo: LabelGeometry) -> list[dict]:
    """Normal-anatomy questions, each emitted only when the label map gives a clear answer.
    Ordered so that consecutive entries cover different categories. Sides are measured (never
    assumed from which label is which), so a mirrored body gets mirrored answers."""
    L, out = LABELS, []
    mid = geo.midline
    present = lambda *names: all(geo.count([L[n]]) > 0 for n in names)  # noqa: E731
    heart = geo.centroid([L["heart"]]) if present("heart") else None
    spine = geo.centroid([L["spine"]]) if present("spine") else None
    # 0 heart side
    if heart is not None and geo.side(heart[0], 8.0):
        out.append(_qa("Which side of the chest is the heart predominantly located on?",
                       f"On the {geo.side(heart[0], 8.0)} side.", LAT, ML))
    # 1 hemidiaphragm heights: the top of the organs under each dome
    if present("liver") and (present("stomach") or present("spleen")):
        liver_top = geo.extent([L["liver"]], 2)[1]
        other_top = geo.extent([L["stomach"], L["spleen"]], 2)[1]
        liver_side = "right" if geo.centroid([L["liver"]])[0] > mid else "left"
        other_side = "left" if liver_side == "right" else "right"
        if abs(liver_top - other_top) > 5:
            out.append(_qa("Which hemidiaphragm is higher?",
                           f"The {liver_side if liver_top > other_top else other_side} hemidiaphragm is higher.", LON, LAT))
    # 2 heart vs spine, front-back
    if heart is not None and spine is not None and abs(heart[1] - spine[1]) > 20:
        out.append(_qa("Is the heart anterior or posterior to the spine?",
                       f"{'Anterior' if heart[1] > spine[1] else 'Posterior'} to the spine.", AP))
    # 3 trachea position (airway above the carina)
    carina = _carina_z(geo)
    if carina is not None:
        top = _airway_at(geo, geo.extent([L["airway"]], 2)[1] - 10)
        if top is not None:
            dx = top[0] - mid
            where = "In the midline." if abs(dx) < 5 else f"Deviated to the {'right' if dx > 0 else 'left'}." if abs(dx) > 10 else None
            if where:
                out.append(_qa("Where is the trachea located?", where, ML))
    # 4 which lung has three lobes
    right_lung, left_lung = _lung_ids(geo, "right"), _lung_ids(geo, "left")
    nr = sum(geo.count([i]) > 0 for i in right_lung)
    nl = sum(geo.count([i]) > 0 for i in left_lung)
    if {nr, nl} == {2, 3}:
        out.append(_qa("Which lung has three lobes?", f"The {'right' if nr == 3 else 'left'} lung.", LAT, ADJ))
    # 5 craniocaudal extent of the right lung
    if nr:
        z_lo, z_hi = geo.extent(right_lung, 2)
        out.append(_qa("What is the craniocaudal extent of the right lung?", _mm(z_hi - z_lo + geo.spacing[2]), EXT))
    # 6 descending aorta vs spine: aorta voxels in the lowest third of its span are descending
    if present("aorta") and spine is not None:
        box = geo.box([L["aorta"]])
        z0, z1 = box[2].start, box[2].stop
        low = slice(z0, z0 + max(1, (z1 - z0) // 3))
        ii, _, _ = np.nonzero(geo.lab[:, :, low] == L["aorta"])
        if len(ii):
            dx = geo.axes[0][ii].mean() - spine[0]
            if abs(dx) > 8:
                out.append(_qa("On which side of the spine does the descending aorta run?",
                               f"On the {'right' if dx > 0 else 'left'} side of the spine.", LAT, ML))
    # 7 liver relative to the right hemidiaphragm
    liver_side = geo.side(geo.centroid([L["liver"]])[0]) if present("liver") else None
    if liver_side and (nr if liver_side == "right" else nl):
        liver, lung = geo.centroid([L["liver"]]), geo.centroid(right_lung if liver_side == "right" else left_lung)
        if liver[2] < lung[2] - 20:
            out.append(_qa("Where is the liver located relative to the diaphragm?",
                           f"Below the {liver_side} hemidiaphragm, in the {liver_side} upper abdomen.", LON, ADJ, LAT))
    # 8 trachea vs spine, front-back
    if carina is not None and spine is not None:
        tr = _airway_at(geo, carina + 20)
        if tr is not None and abs(tr[1] - spine[1]) > 15:
            out.append(_qa("Is the trachea anterior or posterior to the spine?",
                           f"{'Anterior' if tr[1] > spine[1] else 'Posterior'} to the spine.", AP))
    # 9 which lung is larger (volume)
    vr, vl = geo.count(right_lung), geo.count(left_lung)
    if vr and vl and abs(vr - vl) > 0.08 * max(vr, vl):
        out.append(_qa("Which lung is larger?", f"The {'right' if vr > vl else 'left'} lung is larger.", LAT, EXT))
    # 10 transverse width of the chest (body outline)
    x_lo, x_hi = geo.extent(range(1, 256), 0)
    out.append(_qa("What is the maximum transverse width of the chest?", _mm(x_hi - x_lo + geo.spacing[0]), EXT))
    # 11 heart vs descending aorta, front-back
    if heart is not None and present("aorta"):
        box = geo.box([L["aorta"]])
        low = slice(box[2].start, box[2].start + max(1, (box[2].stop - box[2].start) // 3))
        _, jj, _ = np.nonzero(geo.lab[:, :, low] == L["aorta"])
        if len(jj) and abs(heart[1] - geo.axes[1][jj].mean()) > 20:
            out.append(_qa("Is the heart anterior or posterior to the descending aorta?",
                           f"{'Anterior' if heart[1] > geo.axes[1][jj].mean() else 'Posterior'} to the descending aorta.", AP))
    return out


# How many answers each question template can have by design (None: a measurement, "About N mm."):
# chance for a template is 1/k, a uniform guess among them (bench/blind_ceiling.py, the report).
_LESION_OPTIONS = {"Which side is the {k} on?": 2, "Which lung contains the {k}?": 2, "In which lobe is the {k} located?": 5,
                   "What is the largest diameter of the {k}?": None, "Is the {k} in the upper or lower part of the lung?": 2,
                   "Is the {k} central or peripheral?": 2, "Is the {k} adjacent to the pleura?": 2,
                   "Is the {k} in the anterior or posterior part of the lung?": 2}
ANSWER_OPTIONS: dict[str, int | None] = {        # v2, the current generator
    **{q.format(k=k): n for k in ("nodule", "mass") for q, n in _LESION_OPTIONS.items()},
    "Is the pleural effusion bilateral?": 3, "Where is the pleural effusion located?": 3,
    "What is the maximum thickness of the pleural effusion?": None,
    "Is the pleural effusion in the upper or lower part of the hemithorax?": 2,
    "Does the pleural effusion extend to the lung apex?": 2, "Which side is the pleural effusion on?": 3,
    "Where is the enlarged lymph node located?": 4, "Which side is the enlarged lymph node on?": 2,
    "What is the short-axis diameter of the enlarged lymph node?": None,
    "Is the enlarged lymph node anterior or posterior to the trachea?": 2,
    "Is the enlarged lymph node above or below the carina?": 2,
    "Which side of the chest is the heart predominantly located on?": 2, "Which hemidiaphragm is higher?": 2,
    "Is the heart anterior or posterior to the spine?": 2, "Where is the trachea located?": 3,
    "Which lung has three lobes?": 2, "What is the craniocaudal extent of the right lung?": None,
    "On which side of the spine does the descending aorta run?": 2,
    "Where is the liver located relative to the diaphragm?": 2, "Is the trachea anterior or posterior to the spine?": 2,
    "Which lung is larger?": 2, "What is the maximum transverse width of the chest?": None,
    "Is the heart anterior or posterior to the descending aorta?": 2,
}


# v1: no mirroring, five node stations (three sides, midline included)
_V1_OPTIONS = {"Where is the enlarged lymph node located?": 5, "Which side is the enlarged lymph node on?": 3}


def answer_options(version: int = LATEST) -> dict[str, int | None]:
    """Question template -> how many answers it can have in that generator version (None: a measurement)."""
    return {**ANSWER_OPTIONS, **(_V1_OPTIONS if version == 1 else {})}


def version_of(dataset_id: str) -> int:
    """The generator version of a phantom data set, from the name `generate` gives it."""
    m = re.match(r"phantom-v(\d+)-", dataset_id)
    return int(m.group(1)) if m else 1


def qa_from_labels(labels: np.ndarray, affine: np.ndarray, findings: Sequence[Finding],
                   variant: int = 0, max_qa: int | None = 10, version: int = 1) -> list[dict]:
    """Spatial QA measured from a label map (any orientation) and its affine.

    From `findings` only `kind` and `label_id` are read (which id is which finding); side, lobe,
    level, depth, centricity, contact and size are all measured in RAS world coordinates.
    `variant` picks phrasings and rotates the normal-anatomy questions, so a data set covers all
    six categories; each case gets 6-10 QAs, finding questions first. max_qa=None returns every
    question the label map answers clearly, unselected. `version` 2 leaves out the questions
    whose answer no mirroring changes, and those only ever answered one way (NOT_IN_V2)."""
    if version not in GENERATORS:
        raise ValueError(f"phantom version must be one of {list(GENERATORS)}, got {version!r}")
    geo = LabelGeometry(labels, affine)
    per_finding = []
    for f in findings:
        if geo.count([f.label_id]) == 0:
            continue
        kind = finding_kind(f.label_id) or f.kind
        make = {"nodule": _lesion_qas, "mass": _lesion_qas, "effusion": _effusion_qas, "lymph_node": _node_qas}[kind]
        per_finding.append(make(geo, kind, f.label_id, variant))
    # finding questions round-robin over findings, so every finding gets its first questions
    if version >= 2:
        per_finding = [[q for q in qas if q["question"] not in NOT_IN_V2] for qas in per_finding]
    ranked: list[dict] = []
    for rank in range(max((len(x) for x in per_finding), default=0)):
        ranked += [qas[rank] for qas in per_finding if rank < len(qas)]
    anatomy = _anatomy_qas(geo)
    if version >= 2:
        anatomy = [q for q in anatomy if q["question"] not in NOT_IN_V2]
    if max_qa is None:
        return ranked + anatomy
    start = (2 * variant) % max(len(anatomy), 1)
    anatomy = anatomy[start:] + anatomy[:start]
    target = min(max_qa, 6 + variant % 5)
    n_anat = min(len(anatomy), max(3, target - len(ranked)))   # always some normal anatomy
    picked = ranked[: max(0, target - n_anat)]
    picked += anatomy[: target - len(picked)]
    seen, out = set(), []
    for q in picked:                       # no duplicate question within a volume
        if q["question"] not in seen:
            seen.add(q["question"])
            out.append(q)
    return out
