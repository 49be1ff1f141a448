"""Fake of VILA's llava/mm_utils.py: process_images, tokenizer_image_token, KeywordsStoppingCriteria."""
import torch
from transformers import StoppingCriteria

from llava._fake_record import record
from llava.constants import IMAGE_TOKEN_INDEX


def process_images(images, image_processor, model_cfg):
    model_cfg.image_processor = image_processor
    mode = getattr(model_cfg, "image_aspect_ratio", None)
    if mode != "resize":
        raise NotImplementedError("fake process_images: only image_aspect_ratio='resize'")
    size = image_processor.size
    record("process_images", sizes=[list(im.size) for im in images], modes=[im.mode for im in images],
           target=[size["height"], size["width"]])
    out = []
    for image in images:
        image = image.resize((size["width"], size["height"]))
        out.append(image_processor.preprocess(image, return_tensors="pt")["pixel_values"][0])
    return torch.stack(out)


def tokenizer_image_token(prompt, tokenizer, image_token_index=IMAGE_TOKEN_INDEX, return_tensors=None, lstrip=False):
    chunks = [tokenizer(chunk, add_special_tokens=False).input_ids for chunk in prompt.split("<image>")]
    ids = list(chunks[0])
    for chunk in chunks[1:]:
        ids += [image_token_index] + list(chunk)
    record("tokenizer_image_token", prompt=prompt, ids=ids)
    if return_tensors == "pt":
        return torch.tensor(ids, dtype=torch.long)
    return ids


def get_model_name_from_path(model_path):
    return model_path.strip("/").split("/")[-1]


class KeywordsStoppingCriteria(StoppingCriteria):
    def __init__(self, keywords, tokenizer, input_ids):
        self.keywords = keywords
        self.tokenizer = tokenizer
        self.start_len = input_ids.shape[1]
        record("stopping_criteria", keywords=keywords, start_len=self.start_len)

    def __call__(self, output_ids, scores, **kwargs):
        text = self.tokenizer.decode(output_ids[0, -8:], skip_special_tokens=False)
        return any(text.endswith(k) for k in self.keywords)
