from .language_model import LamedPhi3Config, LamedPhi3ForCausalLM  # noqa: F401
