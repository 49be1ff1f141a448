from .lamed_phi3 import LamedPhi3Config, LamedPhi3ForCausalLM  # noqa: F401
