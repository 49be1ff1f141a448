"""Plain-text prompt templates for models whose own code takes one string per question (RadFM,
Merlin): no chat template, no image placeholders beyond what the template itself spells out.

Each template is part of its adapter's `generation()`, so any change to a string here changes the
run identity; bump the name's version when you edit one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class TextPrompt:
    name: str
    source: str
    template: str               # formatted with question=... (and whatever else the adapter documents)

    def format(self, **fields: str) -> str:
        return self.template.format(**fields)

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


# chaoyi-wu/RadFM Quick_demo/test.py (combine_and_preprocess with the image at position 0) and the
# CT-SpatialVQA harness (inference/radfm/run_custom_eval.py) build the same string: the image
# markup, then the question with nothing around it.
RADFM_IMAGE_FIRST = TextPrompt(
    name="radfm-image-first-v1",
    source="chaoyi-wu/RadFM Quick_demo/test.py; CT-SpatialVQA inference/radfm/run_custom_eval.py (identical)",
    template="<image>{image_tokens}</image>{question}",
)

# Merlin was trained on report sections prompted as "Generate a radiology report for <organ
# system>###\n" (documentation/report_generation_demo.py; TextDecoder masks the labels up to the
# "###\n" token). A question takes the instruction's place, the "###\n" separator kept.
MERLIN_REPORT_STYLE = TextPrompt(
    name="merlin-report-style-v1",
    source="StanfordMIMI/Merlin documentation/report_generation_demo.py: '<instruction>###\\n'",
    template="{question}###\n",
)

# Mashrafi27/CT-SpatialVQA benchmarking/inference/merlin/run_custom_eval.py SYSTEM_PROMPT.
MERLIN_CTSVQA_HARNESS = TextPrompt(
    name="merlin-ctsvqa-harness-v1",
    source="CT-SpatialVQA benchmarking/inference/merlin/run_custom_eval.py SYSTEM_PROMPT",
    template=("Answer the question concisely using this CT. Output only the answer (no preamble). "
              "Question: {question}\nAnswer:"),
)
