import os


def get_model_config(config):
    """Sub-folder paths of llm / vision_tower / mm_projector, as VILA @ 355fda9 finds them: a dict (or
    config) under `*_cfg` means the folder `<root>/llm` etc. of the checkpoint (root = the config's
    `_name_or_path`, else `resume_path`); a string is used as the path itself."""
    name = getattr(config, "_name_or_path", None)
    root = name if name and len(name) >= 2 else getattr(config, "resume_path", None)
    out = []
    for key in ("llm_cfg", "vision_tower_cfg", "mm_projector_cfg"):
        cfg = getattr(config, key, None)
        if isinstance(cfg, str):
            out.append(cfg)
        elif cfg is not None:
            out.append(os.path.join(root, key[:-4]))
    return out


def is_mm_model(model_path):
    import json

    with open(os.path.join(model_path, "config.json")) as f:
        return any("llava" in a.lower() for a in json.load(f).get("architectures", []))
