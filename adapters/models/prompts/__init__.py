"""Versioned prompt templates for the slice-stack models (MedGemma, Lingshu).

A template is the user turn's content list: the instruction text, then per slice the image and its
label, then the query. Each is part of the adapter's `generation()`, so any change to a string here
changes the run identity; bump the name's version when you edit one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class SlicePrompt:
    name: str
    source: str
    instruction: str
    slice_label: str            # formatted with i = 1..N, after each image
    query: str                  # formatted with question=...

    def messages(self, n_slices: int, question: str) -> list[dict[str, Any]]:
        """One user turn, as the published scripts build it (images as placeholders: the pixels
        go to the processor separately, in the same order)."""
        content: list[dict[str, Any]] = [{"type": "text", "text": self.instruction}]
        for i in range(1, n_slices + 1):
            content.append({"type": "image"})
            content.append({"type": "text", "text": self.slice_label.format(i=i)})
        content.append({"type": "text", "text": self.query.format(question=question)})
        return [{"role": "user", "content": content}]

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


# Google-Health/medgemma notebooks/high_dimensional_ct_hugging_face.ipynb: instruction, then per
# slice the image and "SLICE i", then the query (here: the benchmark question as asked).
MEDGEMMA_NOTEBOOK = SlicePrompt(
    name="medgemma-ct-notebook-v1",
    source="Google-Health/medgemma notebooks/high_dimensional_ct_hugging_face.ipynb",
    instruction=("You are an instructor teaching medical students. You are analyzing a contiguous block of "
                 "CT slices from the center of the abdomen. Please review the slices provided below carefully."),
    slice_label="SLICE {i}",
    query="{question}",
)

# Mashrafi27/CT-SpatialVQA benchmarking/inference/{medgemma,medevalkit}/run_custom_eval.py:
# DEFAULT_INSTRUCTION and f"{DEFAULT_QUERY_SUFFIX}\n\nQuestion: {question}" (same for both models).
CTSVQA_HARNESS = SlicePrompt(
    name="ctsvqa-harness-v1",
    source="CT-SpatialVQA benchmarking/inference/medgemma/run_custom_eval.py (and medevalkit/)",
    instruction=("You are an instructor teaching medical students. You are analyzing a contiguous block of "
                 "CT slices. Please review the slices provided below carefully."),
    slice_label="SLICE {i}",
    query=("\n\nBased on the visual evidence in the slices provided above, answer the question below. "
           "Provide concise reasoning and conclude with a final answer.\n\nQuestion: {question}"),
)

PROMPTS = {p.name: p for p in (MEDGEMMA_NOTEBOOK, CTSVQA_HARNESS)}
