import flash_attn  # noqa: F401  (as upstream: unconditional)
