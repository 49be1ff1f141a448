"""Model-input recipes: small declarative objects, one per model's own published preprocessing,
plus a separately named `-upstream-harness` variant wherever the CT-SpatialVQA scripts deviated
(../shared/research/models.md, ../shared/research/upstream-formats.md §e).

Every recipe names its *frame* — how the decoded volume is laid out before resizing — and so
where the patient's left ends up in its output:

  display    (D, H, W) = (z inferior->superior, y anterior->posterior, x patient-right->left):
             each axial slice as a radiologist views it (anterior up, patient's left on the image's
             right). Patient left = high W index.
  ras-xyz    (X, Y, Z) in RAS+ order (MONAI Orientation "RAS", Merlin). Patient left = low X index.
  ras-zyx    the same volume as (Z, Y, X) (SimpleITK's array after orienting to RAS). Patient left =
             low X (last axis) index.
  ctclip     the layout CT-CLIP was trained on: CT-RATE volumes stored L,P,S, read by nibabel and
             transposed (2, 0, 1) to (z, x, y); reoriented to that storage first, whatever the file's
             own. Patient left = high H index.
  voxel-zyx  the file's stored voxel order as SimpleITK's GetArrayFromImage gives it: no
             reorientation (the upstream harness). Where the left is depends on the file's affine.
  voxel-zxy  the stored order as nibabel gives it (x, y, z), transposed (2, 0, 1) the way CT-CLIP's
             loader does, no reorientation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

FRAMES = ("display", "ras-xyz", "ras-zyx", "ctclip", "voxel-zyx", "voxel-zxy")


@dataclass(frozen=True)
class Recipe:
    name: str
    version: str
    model: str
    frame: str
    kind: str                                   # 'volume' (float32 array) or 'slices' (uint8 RGB stack)
    source: str                                 # where the recipe comes from
    clip: tuple[float, float] | None = None     # HU window applied before scaling
    scale: str = "none"                         # 'minmax' -> [0,1] over the (clipped) volume, 'window01',
    #                                             'window11' (clip range -> [0,1] / [-1,1]), 'div1000'
    size: tuple[int, int, int] | None = None    # output grid in frame order (trilinear, align_corners=False)
    spacing: tuple[float, float, float] | None = None    # or: resample to this spacing (frame order)
    spacing_rounding: str = "round"             # 'round' (SimpleITK/MONAI) or 'trunc' (CT-CLIP's int())
    resampler: str = "torch"                    # 'torch' (half-pixel grid) | 'sitk' (SimpleITK Resample to
    #                                             `size` keeping origin and direction, as the upstream scripts did)
    use_header_spacing: bool = True
    crop_pad: tuple[int, int, int] | None = None   # centre crop / pad to this shape (frame order)
    pad_value: float = 0.0
    channels: int = 1                            # >1: the volume repeated as channels (RadFM)
    layout: str = "(1, D, H, W)"                 # axis layout of the saved array
    n_slices: int | None = None                  # slices recipes
    slice_rule: str = "linspace"                 # 'linspace' round(linspace(0, n-1, k)) | 'medgemma' | 'middle'
    windows: tuple[tuple[float, float], ...] = field(default_factory=tuple)   # one per RGB channel
    slice_size: int | None = None                # resize each slice to this square size (bilinear)
    output: str = "npy"                          # 'npy' | 'npz'
    native: bool = False                         # the frame's own grid and HU values, no resize, clip or
    #                                              scale; saved with 'spacing' (mm, frame axis order)
    left: str = ""                               # where the patient's left is, in words

    @property
    def key(self) -> str:
        return f"{self.name}@{self.version}"


def _r(**kw) -> Recipe:
    frame = kw["frame"]
    default_left = {
        "display": "patient left = high W index (the right half of every axial slice, radiological view)",
        "ras-xyz": "patient left = low X index",
        "ras-zyx": "patient left = low W (X) index",
        "ctclip": "patient left = high H index (CT-RATE's L,P,S storage, transposed to (z, x, y))",
        "voxel-zyx": "depends on the file: stored voxel order, no reorientation (for L,P,S-stored files, "
                     "patient left = high W index; for R,A,S-stored files, low W index)",
        "voxel-zxy": "depends on the file: stored voxel order (z, x, y), no reorientation (for L,P,S-stored "
                     "files, patient left = high H index)",
    }[frame]
    kw.setdefault("left", default_left)
    return Recipe(**kw)


RECIPES: dict[str, Recipe] = {r.name: r for r in [
    # M3D-LaMed: 1x32x256x256 in [0,1]; trained on display-windowed slice stacks, min-max normalised.
    _r(name="m3d", version="1", model="M3D-LaMed", frame="display", kind="volume", clip=(-1000, 1000),
       scale="minmax", size=(32, 256, 256), source="M3D README quick start; Data/process/m3d_cap_data_prepare.py"),
    _r(name="m3d-upstream-harness", version="1", resampler="sitk", model="M3D-LaMed", frame="voxel-zyx", kind="volume",
       scale="minmax", size=(32, 256, 256),
       source="CT-SpatialVQA benchmarking/preprocess/preprocess_m3d.py: SimpleITK linear, global min-max of raw HU"),
    # Med3DVLM: 1x128x256x256, same M3D-Cap style normalisation.
    _r(name="med3dvlm", version="1", model="Med3DVLM", frame="display", kind="volume", clip=(-1000, 1000),
       scale="minmax", size=(128, 256, 256), source="Med3DVLM src/dataset (M3D-Cap: min-max, Resize 128x256x256)"),
    _r(name="med3dvlm-upstream-harness", version="1", resampler="sitk", model="Med3DVLM", frame="voxel-zyx", kind="volume",
       scale="minmax", size=(128, 256, 256), source="CT-SpatialVQA preprocess_med3dvlm.py: min-max raw HU, no crop"),
    # CT-CHAT's CT-CLIP encoder: clip +-1000, /1000, spacing z 1.5 / xy 0.75 (int() sizes), crop/pad -1
    # to 480x480x240, permuted to (240, 480, 480).
    _r(name="ctchat", version="1", model="CT-CHAT (CT-CLIP CTViT)", frame="ctclip", kind="volume",
       clip=(-1000, 1000), scale="div1000", spacing=(1.5, 0.75, 0.75), spacing_rounding="trunc",
       crop_pad=(240, 480, 480), pad_value=-1.0, layout="(1, D, H, W)",
       source="CT-CLIP nii_img_to_tensor / CT-CHAT llava/serve/encode_script.py"),
    _r(name="ctchat-upstream-harness", version="1", model="CT-CHAT (CT-CLIP CTViT)", frame="voxel-zxy",
       kind="volume", clip=(-1000, 1000), scale="div1000", spacing=(1.5, 0.75, 0.75), spacing_rounding="trunc",
       crop_pad=(240, 480, 480), pad_value=-1.0, use_header_spacing=False, layout="(1, D, H, W) = (z, x, y)",
       source="CT-SpatialVQA inference/ct-chat/encode_embeddings.py: spacing taken as 1.0 mm, header ignored"),
    # Merlin: Orientation RAS, spacing (1.5, 1.5, 3), clip +-1000 -> [0,1], pad/crop (224, 224, 160) in X,Y,Z.
    _r(name="merlin", version="1", model="Merlin", frame="ras-xyz", kind="volume", clip=(-1000, 1000),
       scale="window01", spacing=(1.5, 1.5, 3.0), crop_pad=(224, 224, 160), layout="(1, X, Y, Z)",
       source="merlin-vlm MONAI transforms: Orientationd RAS, Spacingd (1.5,1.5,3), SpatialPad/CenterCrop"),
    _r(name="merlin-upstream-harness", version="1", model="Merlin", frame="ras-zyx", kind="volume",
       clip=(-1000, 1000), scale="window01", spacing=(3.0, 1.5, 1.5), crop_pad=(160, 224, 224),
       layout="(1, Z, Y, X) — an axis order Merlin was not trained on",
       source="CT-SpatialVQA preprocess_merlin.py: DICOMOrient RAS, array (z, y, x) cropped to (160, 224, 224)"),
    # RadFM: per-image min-max [0,1], 256x256 x <=64 slices, 3 channels stacked, (3, H, W, D).
    _r(name="radfm", version="1", model="RadFM", frame="display", kind="volume", clip=(-1000, 1000),
       scale="minmax", size=(64, 256, 256), channels=3, layout="(3, H, W, D)",
       source="RadFM src/Dataset: min-max per image, 3 channels, 256x256, depth <= 64"),
    _r(name="radfm-upstream-harness", version="1", resampler="sitk", model="RadFM", frame="voxel-zyx", kind="volume",
       clip=(-1024, 1024), scale="window01", size=(128, 512, 512), channels=3, layout="(3, H, W, D)",
       source="CT-SpatialVQA benchmarking/preprocess/preprocess_radfm.py: 512x512x128, clip +-1024"),
    # MedGemma 1.5: 85 axial slices, RGB windows (-1024,1024) (-135,215) (0,80), native resolution.
    _r(name="medgemma", version="1", model="MedGemma 1.5 4B", frame="display", kind="slices", n_slices=85,
       slice_rule="medgemma", windows=((-1024, 1024), (-135, 215), (0, 80)), output="npz",
       layout="(N, H, W, 3) uint8", source="Google-Health/medgemma high_dimensional_ct notebook"),
    _r(name="medgemma-upstream-harness", version="1", model="MedGemma 1.5 4B", frame="voxel-zyx", kind="slices",
       n_slices=85, slice_rule="linspace", windows=((-1225, 1025), (-135, 215), (0, 80)), slice_size=896,
       output="npz", layout="(N, 896, 896, 3) uint8",
       source="CT-SpatialVQA inference/medgemma/run_custom_eval.py: voxel order, R window (-1225, 1025), 896 px"),
    # VILA-M3: one axial slice (middle), abdominal window W400/L50, RAS; the VISTA3D overlay is the
    # expert's and needs its own weights.
    _r(name="vila-m3", version="1", model="VILA-M3 (image only; VISTA3D overlay not included)", frame="display",
       kind="slices", n_slices=1, slice_rule="middle", windows=((-150, 250),) * 3, output="npz",
       layout="(1, H, W, 3) uint8", source="VILA-M3 m3/demo/experts/utils.py: Orientation RAS, W400/L50"),
    _r(name="vila-m3-upstream-harness", version="1", model="VILA-M3", frame="voxel-zyx", kind="slices",
       n_slices=1, slice_rule="middle", windows=((-150, 250),) * 3, output="npz", layout="(1, H, W, 3) uint8",
       source="CT-SpatialVQA run_vista3d_eval.py: slice nib shape[2] // 2 in voxel order"),
    # Lingshu-7B (what the upstream calls MedEvalKit): no official CT recipe; 32 slices, 3 windows.
    _r(name="lingshu", version="1", model="Lingshu-7B (MedEvalKit)", frame="display", kind="slices", n_slices=32,
       slice_rule="linspace", windows=((-1024, 1024), (-135, 215), (0, 80)), output="npz",
       layout="(N, H, W, 3) uint8", source="no official CT recipe: MedGemma's 3-window RGB, 32 slices"),
    _r(name="lingshu-upstream-harness", version="1", model="Lingshu-7B (MedEvalKit)", frame="voxel-zyx",
       kind="slices", n_slices=32, slice_rule="linspace", windows=((-1024, 1024), (-135, 215), (0, 80)),
       output="npz", layout="(N, H, W, 3) uint8",
       source="CT-SpatialVQA benchmarking/preprocess/preprocess_medevalkit.py"),
    # The phantom expert (adapters/models/phantom_expert.py) measures in millimetres, so it needs the
    # HU as decoded on the native grid plus the voxel spacing; no model of the paper uses this one.
    _r(name="phantom-expert", version="1", model="phantom-expert (classical image analysis, no weights)",
       frame="ras-zyx", kind="volume", native=True, output="npz",
       layout="'arr' (1, Z, Y, X) HU as decoded (int16 where integral, else float32); 'spacing' (z, y, x) mm",
       left="patient left = low W (X) index (canonical frame of tasks/volumes.py: x index 0)",
       source="ctsvqa's own: Volume.canonical() on the native grid, HU unchanged, with canonical_spacing()"),
]}

FAMILIES = ("m3d", "med3dvlm", "ctchat", "merlin", "radfm", "medgemma", "vila-m3", "lingshu")


def select(spec: str) -> list[Recipe]:
    """'all' | 'own' (the eight models' own recipes) | 'upstream' | 'a,b,c'."""
    if spec == "all":
        return list(RECIPES.values())
    if spec == "own":
        return [RECIPES[f] for f in FAMILIES]
    if spec == "upstream":
        return [r for r in RECIPES.values() if r.name.endswith("-upstream-harness")]
    names = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        raise ValueError(f"unknown recipe(s) {unknown}; known: {sorted(RECIPES)}")
    return [RECIPES[n] for n in names]
