# As upstream: this name is no longer re-exported by transformers.trainer in transformers 5.
from transformers.trainer import ALL_LAYERNORM_LAYERS  # noqa: F401
