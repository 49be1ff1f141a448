"""Append what a fake component was handed to $CTSVQA_FAKE_RECORD/<component>.jsonl."""
import json
import os
from pathlib import Path


def record(component, **data):
    folder = os.environ.get("CTSVQA_FAKE_RECORD")
    if not folder:
        return
    Path(folder).mkdir(parents=True, exist_ok=True)
    with open(Path(folder) / f"{component}.jsonl", "a") as f:
        f.write(json.dumps(data, default=str) + "\n")


def fault():
    how = os.environ.get("CTSVQA_FAKE_FAULT")
    if how == "crash":
        os._exit(3)
    if how == "hang":
        import time
        time.sleep(3600)
