from .qwen import VLMQwenConfig, VLMQwenForCausalLM  # noqa: F401
