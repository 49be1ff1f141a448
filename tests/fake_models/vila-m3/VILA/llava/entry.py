from llava.model.builder import load_pretrained_model  # noqa: F401

__all__ = ["load_pretrained_model"]
