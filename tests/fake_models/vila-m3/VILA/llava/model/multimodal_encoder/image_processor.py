# as upstream: TensorFlow support is gone from transformers 5
from transformers.utils import is_tf_available  # noqa: F401
