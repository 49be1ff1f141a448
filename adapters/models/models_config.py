"""Where each model's code, weights and environment are on this machine, said once in a YAML file
(`--models-config FILE`, else `$CTSVQA_MODELS_CONFIG`) instead of on every `ctsvqa infer` line:

    merlin:
      checkpoint: /data/ckpt/merlin          # relative paths are relative to this file
      env: merlin                            # a family name, `current` (in-process), or /path/to/python
      options: {variant: upstream-harness}
      dtype: bfloat16
    m3d:
      code_dir: ~/src/M3D
      checkpoint: ~/ckpt/M3D-LaMed-Phi-3-4B

Command-line flags win over the file; `--option` pairs are merged over the file's `options`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

KEYS = ("checkpoint", "code_dir", "env", "options", "dtype", "device")
PATH_KEYS = ("checkpoint", "code_dir")


def config_path(path: str | Path | None = None) -> Path | None:
    chosen = path or os.environ.get("CTSVQA_MODELS_CONFIG")
    return Path(chosen).expanduser() if chosen else None


def load(path: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """Every model's section, checked; {} when no file is configured. Raises ValueError naming the file,
    the model and the key."""
    import yaml

    file = config_path(path)
    if file is None:
        return {}
    if not file.is_file():
        raise ValueError(f"models config {file}: no such file (from --models-config or $CTSVQA_MODELS_CONFIG)")
    try:
        data = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"models config {file}: not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise ValueError(f"models config {file}: expected a mapping of model name -> settings")
    out: dict[str, dict[str, Any]] = {}
    for model, section in data.items():
        if not isinstance(section, dict):
            raise ValueError(f"models config {file}: model {model!r}: expected a mapping with keys {', '.join(KEYS)}")
        unknown = sorted(set(section) - set(KEYS))
        if unknown:
            raise ValueError(f"models config {file}: model {model!r}: unknown key {unknown[0]!r}; known: "
                             f"{', '.join(KEYS)}")
        section = dict(section)
        if "options" in section and not isinstance(section["options"], dict):
            raise ValueError(f"models config {file}: model {model!r}: options must be a mapping")
        for key in PATH_KEYS:
            if section.get(key) is not None:
                p = Path(str(section[key])).expanduser()
                rel = file.parent / p
                # a hub id (org/name) that is no path here stays as written
                section[key] = str(p if p.is_absolute() else (rel if rel.exists() else p))
        env = section.get("env")
        if isinstance(env, str) and ("/" in env) and not Path(env).expanduser().is_absolute():
            section["env"] = str(file.parent / env)
        out[str(model)] = section
    return out


def for_model(model: str, path: str | Path | None = None) -> dict[str, Any]:
    return load(path).get(model, {})
