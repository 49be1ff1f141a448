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
from tasks.volumes import Volume


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


def resize_clip(arr: np.ndarray, size: tuple[int, int, int], clip: tuple[float, float] | None) -> np.ndarray:
    """Trilinear resize of a (possibly strided, int16) 3-D view, clipping first. float32 out.
    Works along the view's axes in memory order (planes contiguous), then puts them back."""
    order = tuple(int(i) for i in np.argsort([-abs(s) for s in arr.strides], kind="stable"))
    if order != (0, 1, 2):
        inverse = tuple(int(i) for i in np.argsort(order))
        out = _resize_planes(arr.transpose(order), tuple(size[i] for i in order), clip)
        return np.ascontiguousarray(out.transpose(inverse))
    return _resize_planes(arr, size, clip)


def _resize_planes(arr: np.ndarray, size: tuple[int, int, int], clip: tuple[float, float] | None) -> np.ndarray:
    lo, hi, w = _source_positions(arr.shape[0], size[0])
    needed = np.unique(np.concatenate([lo, hi]))
    planes = np.ascontiguousarray(arr[needed]).astype(np.float32)
    if clip is not None:
        np.clip(planes, clip[0], clip[1], out=planes)
    where = {int(s): i for i, s in enumerate(needed)}
    a = planes[[where[int(i)] for i in lo]]
    b = planes[[where[int(i)] for i in hi]]
    out = a + (b - a) * w[:, None, None]
    if out.shape[1:] != tuple(size[1:]):
        t = torch.from_numpy(out)[None]
        out = F.interpolate(t, size=tuple(size[1:]), mode="bilinear", align_corners=False)[0].numpy()
    return out


def resize_reference(arr: np.ndarray, size: tuple[int, int, int], clip: tuple[float, float] | None) -> np.ndarray:
    """The plain path: whole volume to float, clip, torch trilinear."""
    t = torch.from_numpy(np.ascontiguousarray(arr).astype(np.float32))
    if clip is not None:
        t = t.clamp(clip[0], clip[1])
    return F.interpolate(t[None, None], size=tuple(size), mode="trilinear", align_corners=False)[0, 0].numpy()


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
    if recipe.scale == "none":
        return vol
    if recipe.scale == "minmax":
        # min/max of the clipped source volume = the clipped min/max: one pass over int16.
        lo, hi = float(source.min()), float(source.max())
        if recipe.clip is not None:
            lo, hi = np.clip(lo, *recipe.clip), np.clip(hi, *recipe.clip)
        return (vol - lo) / max(hi - lo, 1e-6)
    lo, hi = recipe.clip
    if recipe.scale == "window01":
        return (vol - lo) / (hi - lo)
    if recipe.scale == "window11":
        return 2 * (vol - lo) / (hi - lo) - 1
    if recipe.scale == "div1000":
        return vol / 1000.0
    raise ValueError(f"recipe {recipe.name}: unknown scale {recipe.scale!r}")


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


def render_slices(recipe: Recipe, arr: np.ndarray) -> dict[str, np.ndarray]:
    idx = slice_indices(recipe, arr.shape[0])
    planes = np.ascontiguousarray(arr[idx]).astype(np.float32)
    channels = []
    for lo, hi in recipe.windows:
        channels.append(np.round((np.clip(planes, lo, hi) - lo) / (hi - lo) * 255))
    rgb = np.stack(channels, axis=-1)
    if recipe.slice_size:
        t = torch.from_numpy(rgb).permute(0, 3, 1, 2)
        t = F.interpolate(t, size=(recipe.slice_size, recipe.slice_size), mode="bilinear", align_corners=False)
        rgb = t.permute(0, 2, 3, 1).numpy().round()
    return {"slices": rgb.clip(0, 255).astype(np.uint8), "slice_indices": idx.astype(np.int32)}


BOUNDS = {"minmax": (0.0, 1.0), "window01": (0.0, 1.0), "window11": (-1.0, 1.0), "div1000": (-1.0, 1.0)}


# --- the whole recipe ---------------------------------------------------------------------------

def build(recipe: Recipe, volume: Volume, fast: bool = True) -> dict[str, np.ndarray]:
    """The model input: {'arr': float32 array} for volume recipes, {'slices', 'slice_indices'} for
    slice recipes. fast=False takes the plain full-volume path (for benchmarks and tests)."""
    arr, spacing = frame_view(recipe, volume)
    if recipe.kind == "slices":
        return render_slices(recipe, arr)
    size = output_size(recipe, arr.shape, spacing)
    vol = (resize_clip if fast else resize_reference)(arr, size, recipe.clip)
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
