from .core import forward  # noqa: F401
