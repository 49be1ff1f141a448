"""`phantom-expert`: an offline baseline that reads a phantom volume's intensities and answers the
phantom's question templates by classical image analysis (no weights, no labels).

It consumes the `phantom-expert` recipe (canonical (z, y, x) HU on the native grid, with the voxel
spacing), segments the volume (`phantom_segment.segment`: thresholds, connected components, fitted
ellipses and domes), and then runs the phantom generator's own measuring and wording code
(`adapters.datasets.phantom.qa_from_labels`) on that *estimated* label map, so its answers are
worded exactly like the references and measured the same way. Everything it knows comes from the
ModelInput's array and the question text: never the label maps, the manifest or the QA file.

A question about a nodule, mass or effusion the image does not show is answered as such ("I see no
nodule in the chest."): those stand out from the lung. A question that is not one of the phantom's
templates, a lymph node it cannot see (mediastinal nodes have the mediastinum's density), a
measurement too close to a decision threshold, and a volume that is not a chest phantom all give an
`Answer(status="error")` with the reason; nothing is guessed.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from adapters.datasets.phantom import Finding, qa_from_labels
from adapters.models.base import Answer, ModelAdapter, ModelInput, Question
from adapters.models.phantom_segment import NotAPhantom, Segmentation, segment

# Findings that contrast with the lung around them: absent from the image means absent. A lymph node
# inside the mediastinum has the mediastinum's density, so "not seen" is no answer for nodes.
_ALWAYS_VISIBLE = ("nodule", "mass", "effusion")
_KIND_WORD = {"nodule": "nodule", "mass": "mass", "effusion": "pleural effusion", "lymph_node": "enlarged lymph node"}

# Every question the phantom generator asks, as a pattern, with the finding it needs (None: anatomy).
_LESION = [r"which side is the {k} on", r"which lung contains the {k}", r"in which lobe is the {k} located",
           r"what is the largest diameter of the {k}", r"is the {k} in the upper or lower part of the lung",
           r"is the {k} central or peripheral", r"is the {k} adjacent to the pleura",
           r"is the {k} in the anterior or posterior part of the lung"]
_EFFUSION = [r"is the pleural effusion bilateral", r"where is the pleural effusion located",
             r"what is the maximum thickness of the pleural effusion",
             r"is the pleural effusion in the upper or lower part of the hemithorax",
             r"does the pleural effusion extend to the lung apex", r"which side is the pleural effusion on"]
_NODE = [r"where is the enlarged lymph node located", r"which side is the enlarged lymph node on",
         r"what is the short-axis diameter of the enlarged lymph node",
         r"is the enlarged lymph node anterior or posterior to the trachea",
         r"is the enlarged lymph node above or below the carina"]
_ANATOMY = [r"which side of the chest is the heart predominantly located on", r"which hemidiaphragm is higher",
            r"is the heart anterior or posterior to the spine", r"where is the trachea located",
            r"which lung has three lobes", r"what is the craniocaudal extent of the right lung",
            r"on which side of the spine does the descending aorta run",
            r"where is the liver located relative to the diaphragm",
            r"is the trachea anterior or posterior to the spine", r"which lung is larger",
            r"what is the maximum transverse width of the chest",
            r"is the heart anterior or posterior to the descending aorta"]
TEMPLATES: list[tuple[re.Pattern, str | None]] = (
    [(re.compile("^" + p.format(k=k) + r"\?$"), k) for k in ("nodule", "mass") for p in _LESION]
    + [(re.compile("^" + p + r"\?$"), "effusion") for p in _EFFUSION]
    + [(re.compile("^" + p + r"\?$"), "lymph_node") for p in _NODE]
    + [(re.compile("^" + p + r"\?$"), None) for p in _ANATOMY])


def _key(question: str) -> str:
    return " ".join(question.strip().lower().split())


def template_of(question: str) -> tuple[bool, str | None]:
    """(is a phantom template, the finding kind it is about or None for anatomy)."""
    key = _key(question)
    for pattern, kind in TEMPLATES:
        if pattern.match(key):
            return True, kind
    return False, None


def load_canonical(model_input: ModelInput) -> tuple[np.ndarray, tuple[float, float, float]]:
    """The recipe's array as (x, y, z) RAS HU and its spacing (sx, sy, sz); ValueError if it is not
    a `phantom-expert` input."""
    arrays = model_input.load()
    if "arr" not in arrays or "spacing" not in arrays:
        raise ValueError(f"{model_input.path}: expected the phantom-expert recipe's npz ('arr' and 'spacing'), "
                         f"found {sorted(arrays)} (recipe {model_input.recipe})")
    arr, spacing = np.asarray(arrays["arr"]), np.asarray(arrays["spacing"], dtype=np.float64)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 3 or spacing.shape != (3,) or not np.all(np.isfinite(spacing)) or (spacing <= 0).any():
        raise ValueError(f"{model_input.path}: expected a (1, Z, Y, X) array and 3 positive spacings, "
                         f"got shape {arr.shape} and spacing {spacing.tolist()}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{model_input.path}: the array has NaN or infinite values")
    sz, sy, sx = (float(s) for s in spacing)
    return arr.transpose(2, 1, 0), (sx, sy, sz)


class PhantomExpert(ModelAdapter):
    name = "phantom-expert"
    version = "1"
    default_recipe = "phantom-expert"
    description = ("Offline baseline for synthetic phantoms: reads the CT intensities (thresholds, connected "
                   "components, fitted cavity and domes) and answers the phantom's templates; no weights.")
    packages = ("scipy",)
    OPTIONS = ()

    def __init__(self, settings=None) -> None:
        super().__init__(settings)
        self._cache: tuple[str, Segmentation | Exception, dict] | None = None

    def generation(self) -> dict:
        return {"method": "classical segmentation + phantom QA templates", "segmenter": "phantom_segment v2 (situs inversus mirrored)"}

    def _read(self, model_input: ModelInput) -> tuple[Segmentation | Exception, dict]:
        key = f"{model_input.path}:{model_input.volume}"
        if self._cache is None or self._cache[0] != key:
            try:
                hu, spacing = load_canonical(model_input)
                seg = segment(hu, spacing)
                qa = self._questions(seg)
                self._cache = (key, seg, qa)
            except (NotAPhantom, ValueError, OSError, KeyError) as exc:
                self._cache = (key, exc, {})
        return self._cache[1], self._cache[2]

    @staticmethod
    def _questions(seg: Segmentation) -> dict[str, str]:
        """Every question the estimated label map answers clearly, in both phrasings, -> answer."""
        findings = [Finding(kind, label_id, "", "", (0.0, 0.0, 0.0), 0.0, 0.0) for kind, label_id in seg.findings]
        out: dict[str, str] = {}
        for variant in (0, 1):
            for qa in qa_from_labels(seg.labels, seg.affine, findings, variant=variant, max_qa=None):
                out.setdefault(_key(qa["question"]), qa["answer"])
        return out

    def answer(self, model_input: ModelInput | None, questions: Sequence[Question]) -> list[Answer]:
        if model_input is None:
            return [Answer(q.qid, None, "error", "phantom-expert needs its recipe input (the volume), got none")
                    for q in questions]
        seg, qa = self._read(model_input)
        out = []
        for q in questions:
            known, kind = template_of(q.question)
            if not known:
                out.append(Answer(q.qid, None, "error", f"not a phantom question template: {q.question.strip()!r}"))
            elif isinstance(seg, Exception):
                reason = getattr(seg, "args", [str(seg)])[0] if seg.args else type(seg).__name__
                out.append(Answer(q.qid, None, "error", f"volume {model_input.volume} cannot be read as a chest "
                                                        f"phantom: {reason}"))
            elif _key(q.question) in qa:
                out.append(Answer(q.qid, qa[_key(q.question)]))
            elif kind in _ALWAYS_VISIBLE and kind not in {k for k, _ in seg.findings}:
                # what the image shows, not a guess: nodules, masses and effusions stand out from the lung
                out.append(Answer(q.qid, f"I see no {_KIND_WORD[kind]} in the chest.",
                                  meta={"finding": "absent", "why": seg.missing.get(kind, "")}))
            elif kind is not None and kind not in {k for k, _ in seg.findings}:
                out.append(Answer(q.qid, None, "error", f"no {_KIND_WORD[kind]} found in the image: "
                                                        f"{seg.missing.get(kind, 'not seen')}"))
            else:
                out.append(Answer(q.qid, None, "error", "the measurement is too close to the template's decision "
                                                        "threshold (or the structure is not seen) to answer clearly"))
        return out
