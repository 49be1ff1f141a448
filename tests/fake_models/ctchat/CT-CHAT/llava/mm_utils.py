"""Fake of llava/mm_utils.py: tokenizer_image_token splices IMAGE_TOKEN_INDEX at each <image>."""
import torch

from llava._fake_record import record
from llava.constants import IMAGE_TOKEN_INDEX


def tokenizer_image_token(prompt, tokenizer, image_token_index=IMAGE_TOKEN_INDEX, return_tensors=None):
    chunks = [tokenizer(chunk, add_special_tokens=False).input_ids for chunk in prompt.split("<image>")]
    ids = list(chunks[0])
    for chunk in chunks[1:]:
        ids += [image_token_index] + list(chunk)
    record("tokenizer_image_token", prompt=prompt, ids=ids, image_token_index=image_token_index)
    if return_tensors == "pt":
        return torch.tensor(ids, dtype=torch.long)
    if return_tensors is not None:
        raise ValueError(f"Unsupported tensor type: {return_tensors}")
    return ids


def get_model_name_from_path(model_path):
    parts = model_path.strip("/").split("/")
    return parts[-1]
