"""Apply a recipe to a decoded volume, in memory.

Resampling is trilinear with align_corners=False (torch's, MONAI's and, with a half-voxel origin,
SimpleITK's convention), done separably: along the first axis only the two source slices each
output slice needs are gathered, clipped on int16 and blended in float32; then each slice is
resized in-plane with torch's bilinear. Nothing converts the whole volume to float, which is what
costs (../shared/research/preprocessing-perf.md §3c). `resize_reference` is the plain
full-volume torch path the fast one is tested against.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from adapters.models.recipes import Recipe
from adapters.volumes.nifti import Volume


# --- frames -------------------------------------------------------------------------------------

def frame_view(recipe: Recipe, volume: Volume) -> tuple[np.ndarray, tuple[float, float, float]]:
    """The volume laid out in the recipe's frame (a view), and its spacing in that order (mm)."""
    frame = recipe.frame
    if frame in ("display", "ras-zyx"):
        arr, spacing = volume.canonical(), volume.canonical_spacing()
        if frame == "display":
            arr = arr[:, ::-1, ::-1]              # anterior at row 0, patient right at column 0
    elif frame == "ras-xyz":
        arr, spacing = volume.ras(), volume.ras_zooms()
    elif frame == "ctclip":
        lps = volume.ras()[::-1, ::-1, :]          # CT-RATE files are stored L, P, S
        x, y, z = volume.ras_zooms()
        arr, spacing = lps.transpose(2, 0, 1), (z, x, y)
    elif frame == "voxel-zyx":
        arr, spacing = volume.data.T, tuple(reversed(volume.zooms))
    elif frame == "voxel-zxy":
        i, j, k = volume.zooms
        arr, spacing = volume.data.transpose(2, 0, 1), (k, i, j)
    else:
        raise ValueError(f"recipe {recipe.name}: unknown frame {frame!r}")
    if not recipe.use_header_spacing:
        spacing = (1.0, 1.0, 1.0)
    return arr, spacing


def left_side(recipe: Recipe, volume: Volume) -> tuple[int, str]:
    """(axis of the saved array, 'low' or 'high'): where the patient's left ends up."""
    frame = recipe.frame
    if frame in ("display", "ras-zyx", "ras-xyz", "ctclip"):
        axis, end = {"display": (2, "high"), "ras-zyx": (2, "low"), "ras-xyz": (0, "low"),
                     "ctclip": (1, "high")}[frame]
    else:
        codes = volume.axcodes
        stored = next(i for i, c in enumerate(codes) if c in "LR")
        end = "high" if codes[stored] == "L" else "low"
        axis = 2 - stored if frame == "voxel-zyx" else {2: 0, 0: 1, 1: 2}[stored]
    return _saved_axis(recipe, axis), end


def _saved_axis(recipe: Recipe, frame_axis: int) -> int:
    if recipe.kind == "slices":
        return frame_axis                            # (N, H, W, 3): slice axis stays first
    if recipe.channels > 1:
        return {0: 3, 1: 1, 2: 2}[frame_axis]        # (C, H, W, D)
    return frame_axis + 1                            # (1, D, H, W)


# --- resampling -----------------------------------------------------------------------------------

def output_size(recipe: Recipe, shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> tuple:
    if recipe.size is not None:
        return recipe.size
    if recipe.spacing is not None:
        if recipe.spacing_rounding == "trunc":
            return tuple(int(n * s / t) for n, s, t in zip(shape, spacing, recipe.spacing))
        return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, recipe.spacing))
    return tuple(shape)


def _source_positions(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """align_corners=False: output i samples input (i + 0.5) * n_in / n_out - 0.5, clamped."""
    pos = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    pos = np.clip(pos, 0, n_in - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, n_in - 1)
    return lo, hi, (pos - lo).astype(np.float32)


def resize_clip(arr: np.ndarray, size: tuple[int, int, int], clip: tuple[float, float] | None,
                keep: tuple[slice, slice, slice] | None = None) -> np.ndarray:
    """Trilinear resize of a (possibly strided, int16) 3-D view, clipping first. float32 out.
    `keep`: the part of the output wanted (a centre crop that follows): only that is computed along
    the first memory axis. Works along the view's axes in memory order, then puts them back."""
    keep = keep or (slice(None),) * 3
    order = tuple(int(i) for i in np.argsort([-abs(s) for s in arr.strides], kind="stable"))
    if order != (0, 1, 2):
        inverse = tuple(int(i) for i in np.argsort(order))
        out = _resize_planes(arr.transpose(order), tuple(size[i] for i in order), clip,
                             tuple(keep[i] for i in order))
        return np.ascontiguousarray(out.transpose(inverse))
    return _resize_planes(arr, size, clip, keep)


def _clip_native(planes: np.ndarray, clip: tuple[float, float] | None) -> np.ndarray:
    """Clip before converting to float: on int16 it is half the memory traffic."""
    if clip is None:
        return planes
    lo, hi = clip
    if planes.dtype.kind in "iu" and float(lo).is_integer() and float(hi).is_integer():
        return np.clip(planes, int(lo), int(hi))          # a new array: the decoded volume stays intact
    return np.clip(planes.astype(np.float32), lo, hi)


def _resize_planes(arr: np.ndarray, size: tuple[int, int, int], clip: tuple[float, float] | None,
                   keep: tuple[slice, slice, slice]) -> np.ndarray:
    lo, hi, w = _source_positions(arr.shape[0], size[0])
    lo, hi, w = lo[keep[0]], hi[keep[0]], w[keep[0]]
    needed = np.unique(np.concatenate([lo, hi]))
    if len(needed) > 0.6 * arr.shape[0]:
        # Most planes are needed anyway: one fused trilinear pass beats gathering them twice.
        whole = torch.from_numpy(np.ascontiguousarray(_clip_native(arr, clip), dtype=np.float32))
        out = F.interpolate(whole[None, None], size=tuple(size), mode="trilinear", align_corners=False)[0, 0]
        return out[keep].numpy()
    planes = torch.from_numpy(np.ascontiguousarray(_clip_native(arr[needed], clip), dtype=np.float32))
    where = {int(s): i for i, s in enumerate(needed)}
    ia = torch.tensor([where[int(i)] for i in lo])
    ib = torch.tensor([where[int(i)] for i in hi])
    weight = torch.from_numpy(w)[:, None, None]
    in_plane = tuple(size[1:])

    def blend(t: torch.Tensor) -> torch.Tensor:
        a = t.index_select(0, ia)
        return a + (t.index_select(0, ib) - a) * weight

    def plane_resize(t: torch.Tensor) -> torch.Tensor:
        if tuple(t.shape[1:]) == in_plane:
            return t
        return F.interpolate(t[None], size=in_plane, mode="bilinear", align_corners=False)[0]

    # Both steps are linear, so their order is free: shrink the planes first when that makes the
    # blend cheaper (Med3DVLM: 256 planes of 512^2 -> 256^2), blend first otherwise (M3D).
    if in_plane[0] * in_plane[1] < planes.shape[1] * planes.shape[2] and len(needed) <= 2 * len(lo):
        out = blend(plane_resize(planes))
    else:
        out = plane_resize(blend(planes))
    return out[:, keep[1], keep[2]].numpy()


def resize_reference(arr: np.ndarray, size: tuple[int, int, int], clip: tuple[float, float] | None) -> np.ndarray:
    """The plain path: whole volume to float, clip, torch trilinear."""
    t = torch.from_numpy(np.ascontiguousarray(arr).astype(np.float32))
    if clip is not None:
        t = t.clamp(clip[0], clip[1])
    return F.interpolate(t[None, None], size=tuple(size), mode="trilinear", align_corners=False)[0, 0].numpy()


def _crop_window(size: tuple[int, int, int], crop: tuple[int, int, int] | None) -> tuple[slice, slice, slice]:
    """The part of a `size` output that a centre crop to `crop` keeps (same arithmetic as crop_pad)."""
    if crop is None:
        return (slice(None),) * 3
    return tuple(slice((n - c) // 2, (n - c) // 2 + c) if n > c else slice(None) for n, c in zip(size, crop))


def resize_sitk(arr: np.ndarray, size: tuple[int, int, int], spacing: tuple[float, float, float],
                clip: tuple[float, float] | None) -> np.ndarray:
    """What the upstream preprocess scripts did: SimpleITK linear Resample to `size`, output spacing
    in_spacing * in_size / out_size, origin and direction kept (so samples start at the first voxel's
    centre, not half a voxel in, as torch's grid does). `arr` is (z, y, x); clip afterwards."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(arr, dtype=np.float32))
    image.SetSpacing(tuple(float(s) for s in reversed(spacing)))
    out_size = [int(n) for n in reversed(size)]                       # SimpleITK sizes are (x, y, z)
    out_spacing = [s * n / m for s, n, m in zip(image.GetSpacing(), image.GetSize(), out_size)]
    resampled = sitk.Resample(image, out_size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(),
                              out_spacing, image.GetDirection(), 0.0, sitk.sitkFloat32)
    out = sitk.GetArrayFromImage(resampled)
    return np.clip(out, *clip) if clip is not None else out


def crop_pad(vol: np.ndarray, shape: tuple[int, int, int], value: float) -> np.ndarray:
    out = np.full(shape, value, dtype=vol.dtype)
    src, dst = [], []
    for n_in, n_out in zip(vol.shape, shape):
        if n_in >= n_out:                               # centre crop
            start = (n_in - n_out) // 2
            src.append(slice(start, start + n_out))
            dst.append(slice(0, n_out))
        else:                                           # centre pad
            start = (n_out - n_in) // 2
            src.append(slice(0, n_in))
            dst.append(slice(start, start + n_in))
    out[tuple(dst)] = vol[tuple(src)]
    return out


def _scale(recipe: Recipe, vol: np.ndarray, source: np.ndarray) -> np.ndarray:
    """In place, in float32: vol * a + b."""
    if recipe.scale == "none":
        return vol
    if recipe.scale == "minmax":
        # min/max of the clipped source volume = the clipped min/max: one pass over int16.
        lo, hi = float(source.min()), float(source.max())
        if recipe.clip is not None:
            lo, hi = (float(np.clip(lo, *recipe.clip)), float(np.clip(hi, *recipe.clip)))
        a, b = 1.0 / max(hi - lo, 1e-6), 0.0
        b = -lo * a
    elif recipe.scale in ("window01", "window11"):
        lo, hi = recipe.clip
        a, b = 1.0 / (hi - lo), -lo / (hi - lo)
        if recipe.scale == "window11":
            a, b = 2 * a, 2 * b - 1
    elif recipe.scale == "div1000":
        a, b = 1.0 / 1000.0, 0.0
    else:
        raise ValueError(f"recipe {recipe.name}: unknown scale {recipe.scale!r}")
    vol *= np.float32(a)
    vol += np.float32(b)
    return vol


# --- slices ---------------------------------------------------------------------------------------

def slice_indices(recipe: Recipe, n: int) -> np.ndarray:
    k = recipe.n_slices or n
    if recipe.slice_rule == "middle":
        return np.array([n // 2])
    if n <= k:
        return np.arange(n)
    if recipe.slice_rule == "medgemma":
        return np.array([round(i / k * (n - 1)) for i in range(1, k + 1)])
    return np.round(np.linspace(0, n - 1, k)).astype(np.int64)


def window_rgb(values: np.ndarray, windows) -> np.ndarray:
    """round((clip(v, lo, hi) - lo) / (hi - lo) * 255) per window, in float32, stacked as channels."""
    values = values.astype(np.float32)
    return np.stack([np.round((np.clip(values, lo, hi) - lo) / (hi - lo) * 255) for lo, hi in windows], axis=-1)


def render_slices(recipe: Recipe, arr: np.ndarray) -> dict[str, np.ndarray]:
    idx = slice_indices(recipe, arr.shape[0])
    planes = np.ascontiguousarray(arr[idx])
    if planes.dtype.kind in "iu":
        # Integer HU: window every distinct value once and look the pixels up (one gather, not
        # three float passes over 85 slices).
        vmin, vmax = int(planes.min()), int(planes.max())
        table = window_rgb(np.arange(vmin, vmax + 1), recipe.windows).astype(np.uint8)
        rgb = table[planes - planes.dtype.type(vmin)]
    else:
        rgb = window_rgb(planes, recipe.windows)
    if recipe.slice_size:
        t = torch.from_numpy(rgb.astype(np.float32)).permute(0, 3, 1, 2)
        t = F.interpolate(t, size=(recipe.slice_size, recipe.slice_size), mode="bilinear", align_corners=False)
        rgb = t.permute(0, 2, 3, 1).numpy().round()
    if rgb.dtype != np.uint8:
        rgb = rgb.clip(0, 255).astype(np.uint8)
    return {"slices": rgb, "slice_indices": idx.astype(np.int32)}


BOUNDS = {"minmax": (0.0, 1.0), "window01": (0.0, 1.0), "window11": (-1.0, 1.0), "div1000": (-1.0, 1.0)}


# --- the whole recipe ---------------------------------------------------------------------------

def build(recipe: Recipe, volume: Volume, fast: bool = True) -> dict[str, np.ndarray]:
    """The model input: {'arr': float32 array} for volume recipes ('arr' as decoded plus 'spacing' for
    native ones), {'slices', 'slice_indices'} for slice recipes. fast=False takes the plain full-volume path (for benchmarks and tests)."""
    arr, spacing = frame_view(recipe, volume)
    if recipe.kind == "slices":
        return render_slices(recipe, arr)
    if recipe.native:
        return {"arr": np.ascontiguousarray(arr)[None], "spacing": np.asarray(spacing, dtype=np.float64)}
    size = output_size(recipe, arr.shape, spacing)
    if recipe.resampler == "sitk":
        vol = resize_sitk(arr, size, spacing, recipe.clip)
    elif fast:
        vol = resize_clip(arr, size, recipe.clip, _crop_window(size, recipe.crop_pad))
    else:
        vol = resize_reference(arr, size, recipe.clip)
    vol = _scale(recipe, vol, arr).astype(np.float32)
    if recipe.scale in BOUNDS:                       # float rounding in the blend must not leave the range
        np.clip(vol, *BOUNDS[recipe.scale], out=vol)
    if recipe.crop_pad is not None:
        vol = crop_pad(vol, recipe.crop_pad, recipe.pad_value)
    if recipe.channels > 1:
        vol = np.stack([vol.transpose(1, 2, 0)] * recipe.channels)
    else:
        vol = vol[None]
    return {"arr": np.ascontiguousarray(vol, dtype=np.float32)}
