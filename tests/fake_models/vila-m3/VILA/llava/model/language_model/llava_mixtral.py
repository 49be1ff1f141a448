from .modeling_mixtral_long_context import MixtralForCausalLM  # noqa: F401


class LlavaMixtralModel:
    pass
