# as upstream: the function was removed in transformers 5
from transformers.utils.import_utils import is_torch_fx_available

if is_torch_fx_available():
    pass


class MixtralForCausalLM:
    pass
