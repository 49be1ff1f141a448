from llava.train.llava_trainer import ALL_LAYERNORM_LAYERS  # noqa: F401  (the import chain of upstream)


def smart_tokenizer_and_embedding_resize(special_tokens_dict, tokenizer, model):
    added = tokenizer.add_special_tokens(special_tokens_dict)
    model.resize_token_embeddings(len(tokenizer))
    return added
