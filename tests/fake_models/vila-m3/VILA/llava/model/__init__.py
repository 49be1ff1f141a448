from .language_model.llava_llama import LlavaLlamaConfig, LlavaLlamaModel  # noqa: F401
from .language_model.llava_mixtral import LlavaMixtralModel  # noqa: F401
