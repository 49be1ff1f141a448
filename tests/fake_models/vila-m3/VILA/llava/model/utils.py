import os


def get_model_config(config):
    """Sub-folder paths of llm / vision_tower / mm_projector (resume_path + the *_cfg names)."""
    root = getattr(config, "resume_path", None)
    out = []
    for key in ("llm_cfg", "vision_tower_cfg", "mm_projector_cfg"):
        cfg = getattr(config, key)
        name = cfg if isinstance(cfg, str) else cfg["_name_or_path"]
        path = os.path.join(root, name) if root and os.path.isdir(os.path.join(root, name)) else name
        out.append(path)
    return out


def is_mm_model(model_path):
    import json

    with open(os.path.join(model_path, "config.json")) as f:
        return any("llava" in a.lower() for a in json.load(f).get("architectures", []))
