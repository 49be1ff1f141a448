"""Versioned prompt templates for the `<im_patch>` models (M3D-LaMed, Med3DVLM): no chat template,
just 256 `<im_patch>` placeholders followed by the question. Part of the adapters' `generation()`,
so an edit here changes the run identity; bump the name's version when you change one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class ImPatchPrompt:
    name: str
    source: str
    template: str                    # formatted with image_tokens=..., question=...
    image_token: str = "<im_patch>"
    n_image_tokens: int = 256

    def text(self, question: str) -> str:
        return self.template.format(image_tokens=self.image_token * self.n_image_tokens, question=question)

    def as_dict(self) -> dict:
        return asdict(self)


# BAAI-DCAI/M3D README quick start: input_txt = image_tokens + question (no chat template); the
# CT-SpatialVQA harness (inference/m3d/run_custom_eval.py) builds the same string.
M3D_README = ImPatchPrompt(
    name="m3d-readme-v1",
    source="BAAI-DCAI/M3D README quick start; CT-SpatialVQA inference/m3d/run_custom_eval.py builds the same",
    template="{image_tokens}{question}")

# mirthAI/Med3DVLM src/demo/demo.py: "<im_patch>" * 256 + question; the CT-SpatialVQA harness
# (inference/med3dvlm/run_custom_eval.py) builds the same string.
MED3DVLM_DEMO = ImPatchPrompt(
    name="med3dvlm-demo-v1",
    source="mirthAI/Med3DVLM src/demo/demo.py; CT-SpatialVQA inference/med3dvlm/run_custom_eval.py builds the same",
    template="{image_tokens}{question}")

PROMPTS = {p.name: p for p in (M3D_README, MED3DVLM_DEMO)}
