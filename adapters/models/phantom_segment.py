"""Classical segmentation of a synthetic chest-CT phantom from its intensities alone.

Input: HU in RAS voxel order (x patient-right-increasing, y anterior-increasing, z superior-
increasing) and the voxel spacing in mm. Output: an estimated label map with the ids of
`adapters.datasets.phantom.LABELS`, so the generator's own measuring code (LabelGeometry and the
facts functions) can be run on what the image shows. Nothing here reads a label map, a manifest or
a QA file.

What is measured, and how:
- body: everything not connected (in-plane) to the air at the image border;
- lungs: air inside the body (-940 < HU < -500); airways: HU < -940 inside the body (lung
  parenchyma never goes that low, air in a tube always does);
- the thoracic cavity: the body's and the subcutaneous fat's ellipses from their second moments,
  the chest-wall muscle thickness as the tightest ellipse that still holds every lung voxel, the
  mediastinal border as the innermost lung voxel of each side, the apex and both hemidiaphragm domes
  fitted to the air; inside that "expected lung", soft tissue is a finding, the heart or a vessel;
- lobes: fissures are invisible at this contrast, so lobes come from the phantom's mean fissure
  planes (the generator keeps lesions clear of the fissures and upper-lobe lesions high);
- findings: soft tissue in the expected lung, split by a masked 3x3x3 mean into fluid (effusion,
  about 10 HU) and solid; solid blobs are nodules (small or calcified), masses, or hilar and
  paratracheal lymph nodes (by position against the trachea and carina); long vertical blobs are
  vessels; the largest left blob is the heart, whose ellipsoid is fitted within the phantom's ranges
  against the lung air (what sticks out of it is aorta, a node or a lesion touching the heart);
- bone: HU > 215 near the midline (vertebrae); contrast aorta: 100 < HU < 215.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from adapters.datasets.phantom import FINDING_BASE, LABELS

try:                                        # scipy is optional: a numpy fallback does the same
    from scipy import ndimage as _ndi
except ImportError:                         # pragma: no cover - exercised only without scipy
    _ndi = None


class NotAPhantom(ValueError):
    """The volume does not show what a chest phantom shows; the message says what is missing."""


# --- connected components -------------------------------------------------------------------------

_FACE6 = np.array([[[0, 0, 0], [0, 1, 0], [0, 0, 0]],
                   [[0, 1, 0], [1, 1, 1], [0, 1, 0]],
                   [[0, 0, 0], [0, 1, 0], [0, 0, 0]]], bool)
_INPLANE = np.zeros((3, 3, 3), bool)        # x, y neighbours only: one 2-D labelling per z slice
_INPLANE[:, :, 1] = [[0, 1, 0], [1, 1, 1], [0, 1, 0]]


def label(mask: np.ndarray, structure: np.ndarray = _FACE6) -> tuple[np.ndarray, int]:
    """Connected components (scipy.ndimage.label when scipy is present)."""
    if _ndi is not None:
        lab, n = _ndi.label(mask, structure=structure)
        return lab, int(n)
    return _label_numpy(mask, structure)


def _label_numpy(mask: np.ndarray, structure: np.ndarray) -> tuple[np.ndarray, int]:
    """Min-label propagation along the structure's face offsets until nothing changes."""
    big = np.iinfo(np.int64).max
    lab = np.where(mask, np.arange(mask.size, dtype=np.int64).reshape(mask.shape), big)
    offsets = [tuple(o - 1 for o in idx) for idx in zip(*np.nonzero(structure)) if idx != (1, 1, 1)]
    while True:
        before = lab.copy()
        for off in offsets:
            src = tuple(slice(max(-d, 0), n - max(d, 0)) for d, n in zip(off, mask.shape))
            dst = tuple(slice(max(d, 0), n - max(-d, 0)) for d, n in zip(off, mask.shape))
            np.minimum(lab[dst], np.where(mask[dst], lab[src], big), out=lab[dst])
        lab[~mask] = big
        if np.array_equal(lab, before):
            break
    roots, out = np.unique(lab[mask], return_inverse=True)
    result = np.zeros(mask.shape, np.int32)
    result[mask] = out.reshape(-1) + 1
    return result, len(roots)


def _without_small_components(mask: np.ndarray, min_voxels: int) -> np.ndarray:
    """The mask with its connected components of fewer than `min_voxels` voxels removed."""
    lab, n = label(mask)
    if not n:
        return mask
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return sizes[lab] >= min_voxels


def _box_mean(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Mean of `values` over the weighted voxels of each 3x3x3 neighbourhood (0 where none)."""
    v = np.pad(values * weights, 1)
    w = np.pad(weights.astype(np.float32), 1)
    sv = np.zeros(values.shape, np.float32)
    sw = np.zeros(values.shape, np.float32)
    nx, ny, nz = values.shape
    for dx in range(3):
        for dy in range(3):
            for dz in range(3):
                sv += v[dx:dx + nx, dy:dy + ny, dz:dz + nz]
                sw += w[dx:dx + nx, dy:dy + ny, dz:dz + nz]
    return np.where(sw > 0, sv / np.maximum(sw, 1), 0)


# --- the measured anatomy ----------------------------------------------------------------------------

@dataclass
class Segmentation:
    labels: np.ndarray                       # (x, y, z) uint8, ids of phantom.LABELS
    affine: np.ndarray                       # voxel -> mm (origin at voxel 0, RAS axes)
    findings: list[tuple[str, int]]          # (kind, label id) of every finding seen
    notes: dict = field(default_factory=dict)   # what was fitted (for provenance and debugging)
    missing: dict = field(default_factory=dict)  # kind -> why it was not found


def _ellipse_radii(mask2d_count: np.ndarray, U: np.ndarray, V: np.ndarray,
                   s: tuple[float, float]) -> tuple[float, float]:
    """Semi-axes of a filled axis-aligned ellipse from its second moments (voxel-size corrected)."""
    w = mask2d_count.astype(np.float64)
    tot = w.sum()
    mu, mv = (w * U).sum() / tot, (w * V).sum() / tot
    vu = (w * (U - mu) ** 2).sum() / tot - s[0] ** 2 / 12
    vv = (w * (V - mv) ** 2).sum() / tot - s[1] ** 2 / 12
    return 2 * float(np.sqrt(max(vu, 1e-6))), 2 * float(np.sqrt(max(vv, 1e-6)))


def segment(hu: np.ndarray, spacing: tuple[float, float, float]) -> Segmentation:
    """hu: (x, y, z) RAS voxel order; spacing (sx, sy, sz) mm. The segmenter knows the anatomy of
    situs solitus (heart and stomach left, liver right, three right lobes); a body where it finds no
    heart is tried once more mirrored left-right (situs inversus) and, if the heart is there, its
    label map is mirrored back, so every side is read where it lies."""
    seg = _segment_solitus(hu, spacing)
    if "heart" in seg.notes:
        return seg
    try:
        mirrored = _segment_solitus(np.ascontiguousarray(np.asarray(hu)[::-1]), spacing)
    except NotAPhantom:
        return seg
    if "heart" not in mirrored.notes:
        return seg
    mirrored.labels = np.ascontiguousarray(mirrored.labels[::-1])
    mirrored.notes["situs"] = "inversus (segmented mirrored, labels mirrored back)"
    return mirrored


def _segment_solitus(hu: np.ndarray, spacing: tuple[float, float, float]) -> Segmentation:
    hu = np.asarray(hu, dtype=np.float32)
    if hu.ndim != 3 or min(hu.shape) < 8:
        raise NotAPhantom(f"expected a 3-D volume of at least 8 voxels per axis, got shape {hu.shape}")
    sx, sy, sz = (float(s) for s in spacing)
    nx, ny, nz = hu.shape
    xs, ys, zs = np.arange(nx) * sx, np.arange(ny) * sy, np.arange(nz) * sz
    notes: dict = {}

    # body: not the air connected to the image border, slice by slice
    air = hu < -500
    comp, _ = label(air, _INPLANE)
    edge = np.unique(np.concatenate([comp[0].ravel(), comp[-1].ravel(), comp[:, 0].ravel(), comp[:, -1].ravel()]))
    outside = np.isin(comp, edge[edge > 0])
    body = ~outside
    per_slice = body.sum(axis=(0, 1)) / (nx * ny)
    if per_slice.min() < 0.05:
        raise NotAPhantom(f"no body outline on {int((per_slice < 0.05).sum())} of {nz} axial slices "
                          f"(body = voxels above -500 HU not connected to the border air)")
    inside_air = body & air
    airway = body & (hu < -940)
    airway = _without_small_components(airway, 10)
    lung = inside_air & ~airway
    if lung.sum() < 0.01 * body.sum():
        raise NotAPhantom(f"no air-filled lungs inside the body ({int(lung.sum())} voxels between -940 and -500 HU)")

    # body centre and the ellipses of the body and of the fat's inner border (constant along z)
    bcount = body.sum(axis=2)
    X2, Y2 = xs[:, None] + 0 * ys[None, :], 0 * xs[:, None] + ys[None, :]
    w = bcount.astype(np.float64)
    bx, by = float((w * X2).sum() / w.sum()), float((w * Y2).sum() / w.sum())
    U2, V2 = X2 - bx, Y2 - by
    fatlike = body & (hu > -250) & (hu < -35)
    inner = body & ~fatlike
    comp, _ = label(~inner, _INPLANE)          # fill: non-inner pockets not reaching the fat ring
    ring = np.unique(comp[outside])
    inner = ~np.isin(comp, ring[ring > 0])
    a_in, b_in = _ellipse_radii(inner.sum(axis=2), U2, V2, (sx, sy))
    notes.update(body_centre=(bx, by), inner_radii=(a_in, b_in))

    # chest-wall muscle: the largest offset whose ellipse still holds every lung voxel
    li, lj = np.nonzero(lung.any(axis=2))          # in-plane questions: the columns holding lung suffice
    lu, lv = xs[li] - bx, ys[lj] - by
    mus = 6.0
    for m in np.arange(6.0, 20.0, 0.1):
        if (((lu / (a_in - m)) ** 2 + (lv / (b_in - m)) ** 2) <= 1.0).all():
            mus = float(m)
        else:
            break
    ac, bc = a_in - mus, b_in - mus
    # the phantom's mediastinum is 36-46 mm wide: air nearer the midline is airway the threshold missed
    band_r = float(lu[lu >= 17.5].min()) if (lu >= 17.5).any() else 20.0
    band_l = float(-lu[lu <= -17.5].max()) if (lu <= -17.5).any() else 20.0
    band = min(band_r, band_l)
    notes.update(muscle=mus, cavity=(ac, bc), band=(band_l, band_r))

    U, V, H = U2[:, :, None], V2[:, :, None], zs[None, None, :]
    cav2 = (U2 / ac) ** 2 + (V2 / bc) ** 2 <= 1
    half_w = (ac - band) / 2
    q_r = ((U2 - (band + half_w)) / (half_w + 12)) ** 2 + ((V2 + 5) / (bc + 10)) ** 2
    q_l = ((U2 + (band + half_w)) / (half_w + 12)) ** 2 + ((V2 + 5) / (bc + 10)) ** 2
    foot_r = cav2 & (U2 >= band_r - 1e-6) & (q_r < 1)
    foot_l = cav2 & (U2 <= -band_l + 1e-6) & (q_l < 1)
    extent = (nz - 1) * sz
    h0 = 0.62 * extent

    # apex and domes, fitted column by column: where each (x, y) column's lung air ends at the top
    # and at the bottom (L1 over columns = the voxels a 3-D comparison would count, at 2-D cost)
    has = lung.any(axis=2)
    k_top = np.where(has, nz - 1 - np.argmax(lung[:, :, ::-1], axis=2), -1)
    k_bot = np.where(has, np.argmax(lung, axis=2), -1)
    top = zs[k_top[has]].max()
    q_both = np.where(U2 > 0, q_r, q_l)
    cols = (foot_r | foot_l) & has
    reach = np.sqrt(np.clip(1.0 - q_both[cols], 0, None))
    best = (top, np.inf)
    for h_apex in np.arange(top, top + 1.5 * sz, 0.25):
        limit = np.minimum(h0 + (h_apex - h0) * reach, h_apex)
        model = np.searchsorted(zs, limit, side="left") - 1        # highest z strictly below the limit
        cost = float(np.abs(model - k_top[cols]).sum())
        if cost < best[1]:
            best = (float(h_apex), cost)
    h_apex = best[0]
    t = np.clip((zs - h0) / (h_apex - h0), 0, None)
    s2 = np.where(zs > h_apex, -1.0, 1.0 - t ** 2)
    dome_u = 0.55 * ac
    domes = {}
    for side, footp, sign in (("right", foot_r, 1.0), ("left", foot_l, -1.0)):
        sel = footp & has
        d2 = 0.008 * ((U2[sel] - sign * dome_u) ** 2 + V2[sel] ** 2)
        best = (0.25 * extent, np.inf)
        for h in np.arange(0.1 * extent, 0.5 * extent, 0.5):
            model = np.searchsorted(zs, h - d2, side="right")       # lowest z strictly above the dome
            cost = float(np.abs(model - k_bot[sel]).sum())
            if cost < best[1]:
                best = (float(h), cost)
        domes[side] = best[0]
    dia = np.where(U2 >= 0, domes["right"] - 0.008 * ((U2 - dome_u) ** 2 + V2 ** 2),
                   domes["left"] - 0.008 * ((U2 + dome_u) ** 2 + V2 ** 2))
    notes.update(apex=h_apex, domes=domes)
    above = H > dia[:, :, None]
    model_r = foot_r[:, :, None] & (q_r[:, :, None] < s2[None, None, :]) & above
    model_l = foot_l[:, :, None] & (q_l[:, :, None] < s2[None, None, :]) & above
    expected = model_r | model_l

    # --- the label map ---
    lab = np.zeros(hu.shape, np.uint8)
    lab[body] = LABELS["body"]
    lab[body & fatlike & ~inner] = LABELS["fat"]
    # organs under the domes, where the phantom puts them
    organ2 = np.where(U2 > -25, LABELS["liver"], np.where((U2 < -45) & (V2 < -15), LABELS["spleen"], LABELS["stomach"]))
    under = cav2[:, :, None] & ~above & (hu > -400)[...]
    lab[under] = np.broadcast_to(organ2[:, :, None], lab.shape)[under]
    spine = body & (hu > 215) & (np.abs(U) < 30) & (V < 0)
    lab[spine] = LABELS["spine"]
    # lobes from the mean fissure planes (the fissures themselves are not visible)
    ob_r, ob_k = 0.51 * extent, 0.925
    ob_l, hz_r = ob_r + 6.0, ob_r + 6.0
    Vb = np.broadcast_to(V, lab.shape)
    Hb = np.broadcast_to(H, lab.shape)
    Ub = np.broadcast_to(U, lab.shape)
    right = lung & (Ub > 0)
    left = lung & (Ub <= 0)
    fis_r, fis_l = ob_r - ob_k * Vb, ob_l - ob_k * Vb
    lab[right] = np.where(Hb[right] < fis_r[right], LABELS["lung_rll"],
                          np.where(Hb[right] < hz_r, LABELS["lung_rml"], LABELS["lung_rul"]))
    lab[left] = np.where(Hb[left] < fis_l[left], LABELS["lung_lll"], LABELS["lung_lul"])
    lab[airway] = LABELS["airway"]
    notes.update(fissures={"oblique_right": ob_r, "oblique_left": ob_l, "slope": ob_k, "horizontal": hz_r})

    # --- soft tissue where lung is expected ---
    # soft tissue half a millimetre inside the fitted wall (the fit errs outward by a fraction of a voxel)
    cav_soft = (U2 / (ac - 0.5)) ** 2 + (V2 / (bc - 0.5)) ** 2 <= 1
    soft = expected & cav_soft[:, :, None] & (hu > -400)
    smooth = np.zeros(hu.shape, np.float32)
    if soft.any():
        box = tuple(slice(max(int(i.min()) - 1, 0), int(i.max()) + 2) for i in np.nonzero(soft))
        smooth[box] = _box_mean(hu[box], soft[box])
    fluid = soft & (smooth < 25)
    fluid = _without_small_components(fluid, 20)
    solid = soft & ~fluid
    findings: list[tuple[str, int]] = []
    missing: dict = {}
    vox = sx * sy * sz
    if fluid.sum() * vox > 1000:
        lab[fluid] = FINDING_BASE["effusion"]
        findings.append(("effusion", FINDING_BASE["effusion"]))
    else:
        fluid[:] = False
        missing["effusion"] = "no fluid-density (about 10 HU) layer in the pleural spaces"

    # the same expected lung, a little smaller: a blob only on its rim is chest wall the fit let in
    cav_in = (U2 / (ac - 0.3)) ** 2 + (V2 / (bc - 0.3)) ** 2 <= 1
    core = (expected & cav_in[:, :, None] & (H > dia[:, :, None] + 2.0)
            & (np.sqrt(np.where(U > 0, q_r[:, :, None], q_l[:, :, None]))
               < np.sqrt(np.clip(s2, 0, None))[None, None, :] - 2.5 / (half_w + 12)))
    comp, n = label(solid)
    blobs = []
    for idx, sl in enumerate(_find_objects(comp, n), start=1):
        if sl is None:
            continue
        b = _blob(comp[sl] == idx, sl, hu, xs, ys, zs, bx, vox)
        if not core[sl][b["mask"]].any():
            continue
        if b["n"] >= 20 and b["hu"] < 21:          # fluid the voxel-wise split cut off
            _paint(lab, b, FINDING_BASE["effusion"])
            fluid[sl] |= b["mask"]
            continue
        if min(b["ext"][0] / sx, b["ext"][1] / sy) <= 1.01 and b["zspan"] >= 30:
            continue                                # a one-voxel column of chest wall or rib
        blobs.append(b)
    if fluid.sum() * vox > 1000 and not any(k == "effusion" for k, _ in findings):
        findings.append(("effusion", FINDING_BASE["effusion"]))
        missing.pop("effusion", None)
    # airway landmarks: the lymph-node stations and the heart's position hang on them
    trachea = _trachea(lab, xs, ys, zs, bx)
    heart = max((b for b in blobs if b["c"][0] - bx < 0), key=lambda b: b["vol"], default=None)
    if heart is not None and heart["vol"] > 60_000:
        blobs.remove(heart)
        air_pts = _points(expected & lung, xs, ys, zs)
        ell = _fit_heart(heart, air_pts, bx, by, domes["left"], trachea)
        notes["heart"] = tuple(round(float(x), 1) for x in ell)
        q = _ellipsoid_q(heart, ell, xs, ys, zs, bx, by)
        in_heart = heart["mask"].copy()
        in_heart[heart["mask"]] = q <= 1.1 ** 2
        rest = heart["mask"] & ~in_heart
        heart["mask"] = in_heart
        # the whole ellipsoid is heart wherever it is soft tissue above the dome (mediastinum included)
        cu, cv, cz, ru, rv, rz = ell
        qh = ((U - cu) / ru) ** 2 + ((V - cv) / rv) ** 2 + ((H - cz) / rz) ** 2
        whole = (qh <= 1) & above & cav2[:, :, None] & (hu > -400) & (lab == LABELS["body"])
        lab[whole] = LABELS["heart"]
        _paint(lab, heart, LABELS["heart"])
        # what touches the heart outside its ellipsoid: aorta, hilar nodes, lesions
        rc, rn = label(rest)
        for k, rsl in enumerate(_find_objects(rc, rn), start=1):
            if rsl is None:
                continue
            m = rc[rsl] == k
            if m.sum() < 4:
                continue
            full = tuple(slice(a.start + o.start, a.stop + o.start) for a, o in zip(rsl, heart["sl"]))
            blobs.append(_blob(m, full, hu, xs, ys, zs, bx, vox))
        # the heart crosses the midline: its right-hand part is a second blob inside the same ellipsoid
        for b in list(blobs):
            if (_ellipsoid_q(b, ell, xs, ys, zs, bx, by) <= 1.15 ** 2).mean() > 0.8:
                blobs.remove(b)
                _paint(lab, b, LABELS["heart"])
    else:
        heart = None
    # vessels: tall, narrow blobs against the mediastinum (ascending and descending aorta)
    notes["blobs"] = [{"centre_uvz": [round(float(x), 1) for x in b["c"] - [bx, by, 0]],
                       "extent": [round(float(x), 1) for x in b["ext"]], "voxels": b["n"]} for b in blobs]
    vessels = [b for b in blobs if b["umin"] <= band + 2 * sx
               and (b["zspan"] >= 60 or (b["zspan"] >= 40 and min(b["ext"][0], b["ext"][1]) <= 20))]
    for b in vessels:
        blobs.remove(b)
    notes["vessel_blobs"] = len(vessels)

    lesions = []
    for b in blobs:
        kind = None
        if trachea is not None:
            du, dv, dz = b["c"][0] - bx, b["c"][1] - trachea["y"], b["c"][2] - trachea["carina"]
            # the phantom's node stations against the trachea and carina, widened by jitter and radius
            hilar = ((33 <= du <= 60 and -2 <= dv <= 22 and -52 <= dz <= -24)
                     or (-64 <= du <= -38 and -2 <= dv <= 22 and -30 <= dz <= 0))
            paratracheal = 12 <= du <= 45 and -14 <= dv <= 14 and 8 <= dz <= 36
            # nodes are 12-20 mm: a hilar one lies in the lung whole, a paratracheal one shows a cap
            hilar = hilar and b["vol"] >= 700 and max(b["ext"][0], b["ext"][1]) >= 10 and b["ext"].max() <= 26
            paratracheal = (paratracheal and b["vol"] >= 250 and max(b["ext"][0], b["ext"][1]) >= 10
                            and b["ext"].max() <= 26)
            if hilar or paratracheal:
                kind = "lymph_node"
        b["kind"] = kind
        lesions.append(b)
    nodes = [b for b in lesions if b["kind"] == "lymph_node"]
    others = [b for b in lesions if b["kind"] is None]
    nodules = [b for b in others if b["ext"].max() <= 14]
    masses = [b for b in others if b not in nodules and 14 <= b["ext"].max() <= 46]
    if nodes:
        node = max(nodes, key=lambda b: b["n"])
        if not masses and max(node["ext"]) > 22:
            masses.append(node)
        else:
            _paint(lab, node, FINDING_BASE["lymph_node"])
            findings.append(("lymph_node", FINDING_BASE["lymph_node"]))
    if not any(k == "lymph_node" for k, _ in findings):
        missing["lymph_node"] = ("no enlarged lymph node is visible: nodes inside the mediastinum have the "
                                 "density of the mediastinal soft tissue (about 35 HU), so only hilar and "
                                 "paratracheal nodes that bulge into the lung can be seen")
    if masses:
        _paint(lab, max(masses, key=lambda b: b["n"]), FINDING_BASE["mass"])
        findings.append(("mass", FINDING_BASE["mass"]))
    else:
        missing["mass"] = "no soft-tissue mass (>= 14 mm) inside the lungs"
    if nodules:
        _paint(lab, max(nodules, key=lambda b: (b["hu"] > 200, b["n"])), FINDING_BASE["nodule"])
        findings.append(("nodule", FINDING_BASE["nodule"]))
    else:
        missing["nodule"] = "no nodule (< 14 mm soft-tissue or calcified focus) inside the lungs"

    # aorta: contrast-filled, or the descending part bulging into the left lung
    contrast = body & (hu > 100) & (hu < 215) & cav2[:, :, None]
    cl, n = label(contrast)
    if n:
        sizes = np.bincount(cl.ravel())
        sizes[0] = 0
        big = sizes.argmax()
        if sizes[big] * vox > 5000:
            lab[cl == big] = LABELS["aorta"]
            notes["aorta"] = "contrast"
    if "aorta" not in notes and vessels:
        desc = [b for b in vessels if b["c"][0] - bx < 0]
        if desc:                                 # without contrast only what bulges into the lungs shows
            for b in vessels:
                _paint(lab, b, LABELS["aorta"])
            notes["aorta"] = "the parts against the lungs"
    affine = np.diag([sx, sy, sz, 1.0])
    return Segmentation(lab, affine, findings, notes, missing)


def _find_objects(comp: np.ndarray, n: int):
    if _ndi is not None:
        return _ndi.find_objects(comp, max_label=n)
    out = []
    for i in range(1, n + 1):
        idx = np.nonzero(comp == i)
        out.append(tuple(slice(int(a.min()), int(a.max()) + 1) for a in idx) if len(idx[0]) else None)
    return out


def _blob(m: np.ndarray, sl: tuple, hu, xs, ys, zs, bx: float, vox: float) -> dict:
    ii, jj, kk = np.nonzero(m)
    pts = np.stack([xs[ii + sl[0].start], ys[jj + sl[1].start], zs[kk + sl[2].start]], axis=1)
    spacing = np.array([xs[1] - xs[0], ys[1] - ys[0], zs[1] - zs[0]])
    ext = np.ptp(pts, axis=0) + spacing
    return dict(sl=sl, mask=m, n=int(m.sum()), vol=float(m.sum() * vox), ext=ext, c=pts.mean(axis=0),
                hu=float(hu[sl][m].mean()), zspan=float(ext[2]), umin=float(np.abs(pts[:, 0] - bx).min()), pts=pts)


def _points(mask: np.ndarray, xs, ys, zs) -> np.ndarray:
    ii, jj, kk = np.nonzero(mask)
    return np.stack([xs[ii], ys[jj], zs[kk]], axis=1)


# The phantom's heart: an ellipsoid left of and in front of the trachea, sitting on the left dome.
_HEART_RANGES = {"cu": (-34.0, -24.0), "dv": (18.0, 24.0), "dz": (44.0, 50.0),
                 "ru": (50.0, 57.0), "rv": (35.0, 39.0), "rz": (46.0, 52.0)}


def _fit_heart(blob: dict, air: np.ndarray, bx: float, by: float, h_left: float, trachea: dict | None) -> tuple:
    """(centre u, v, z; radii), body-relative u and v: the ellipsoid within the phantom's ranges that
    best separates the heart blob (inside) from the lung air (outside), by coordinate descent."""
    pts = blob["pts"] - [bx, by, 0.0]
    lo, hi = pts.min(axis=0) - 15, pts.max(axis=0) + 15
    air = air - [bx, by, 0.0]
    air = air[((air >= lo) & (air <= hi)).all(axis=1)]
    v_tr = trachea["y"] - by if trachea is not None else float(np.percentile(pts[:, 1], 99.5)) - 37.0 - 21.0
    params = {k: (a + b) / 2 for k, (a, b) in _HEART_RANGES.items()}

    def cost(p: dict) -> int:
        c = np.array([p["cu"], v_tr + p["dv"], h_left + p["dz"]])
        r = np.array([p["ru"], p["rv"], p["rz"]])
        inside_blob = (((pts - c) / r) ** 2).sum(axis=1) <= 1
        inside_air = (((air - c) / r) ** 2).sum(axis=1) <= 1
        return int((~inside_blob).sum() + inside_air.sum())

    best = cost(params)
    for _ in range(3):
        for key, (a, b) in _HEART_RANGES.items():
            for value in np.arange(a, b + 1e-9, 0.5):
                trial = {**params, key: float(value)}
                c = cost(trial)
                if c < best:
                    best, params = c, trial
    return (params["cu"], v_tr + params["dv"], h_left + params["dz"], params["ru"], params["rv"], params["rz"])


def _ellipsoid_q(blob: dict, ell: tuple, xs, ys, zs, bx, by) -> np.ndarray:
    cu, cv, cz, ru, rv, rz = ell
    pts = blob["pts"]
    return ((pts[:, 0] - bx - cu) / ru) ** 2 + ((pts[:, 1] - by - cv) / rv) ** 2 + ((pts[:, 2] - cz) / rz) ** 2


def _paint(lab: np.ndarray, blob: dict, value: int) -> None:
    sub = lab[blob["sl"]]
    sub[blob["mask"]] = value


def _trachea(lab: np.ndarray, xs, ys, zs, bx) -> dict | None:
    """The trachea's front-back position and the carina's height, from the airway labels: the
    lowest slice, walking down from the top, where the airway is still one narrow tube."""
    aw = lab == LABELS["airway"]
    present = aw.any(axis=(0, 1))
    if not present.any():
        return None
    ks = np.nonzero(present)[0]
    spread = []
    for k in ks:
        ii = np.nonzero(aw[:, :, k].any(axis=1))[0]
        spread.append(np.ptp(xs[ii]) + (xs[1] - xs[0]))
    spread = np.array(spread)
    width = float(np.median(spread[-max(1, len(spread) // 4):]))
    carina = None
    for k, s in zip(ks[::-1], spread[::-1]):
        if s > width + 6.0:
            break
        carina = float(zs[k])
        if k - 1 not in set(ks):
            break
    top_k = ks[-1]
    jj = np.nonzero(aw[:, :, top_k])[1]
    return {"carina": carina if carina is not None else float(zs[ks[-1]]), "y": float(ys[jj].mean())}
