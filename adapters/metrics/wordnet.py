"""WordNet 3.0 for nltk's METEOR, read from local files (no download at run time).

Debian's `wordnet-base` ships the database under /usr/share/wordnet but not `lexnames`, which nltk's
reader opens at start-up; nltk also refuses any root outside its data path. So we lay out a private
directory holding copies of the database files (nltk refuses symbolic links that leave its root and
files with several hard links) plus the standard 45-line `lexnames` (the lexicographer file list of
WordNet 3.0, lexnames(5WN)) and register it with nltk.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

DEFAULT_DIRS = ("/usr/share/wordnet",)
DATABASE_FILES = ("data.noun", "data.verb", "data.adj", "data.adv",
                  "index.noun", "index.verb", "index.adj", "index.adv",
                  "noun.exc", "verb.exc", "adj.exc", "adv.exc")

LEXNAMES = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact",
    "noun.attribute", "noun.body", "noun.cognition", "noun.communication", "noun.event", "noun.feeling",
    "noun.food", "noun.group", "noun.location", "noun.motive", "noun.object", "noun.person",
    "noun.phenomenon", "noun.plant", "noun.possession", "noun.process", "noun.quantity", "noun.relation",
    "noun.shape", "noun.state", "noun.substance", "noun.time", "verb.body", "verb.change",
    "verb.cognition", "verb.communication", "verb.competition", "verb.consumption", "verb.contact",
    "verb.creation", "verb.emotion", "verb.motion", "verb.perception", "verb.possession", "verb.social",
    "verb.stative", "verb.weather", "adj.ppl")
_POS_NUMBER = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}


class WordNetMissing(RuntimeError):
    pass


def find_database() -> Path:
    candidates = [os.environ["CTSVQA_WORDNET"]] if os.environ.get("CTSVQA_WORDNET") else list(DEFAULT_DIRS)
    for c in candidates:
        if all((Path(c) / f).is_file() for f in DATABASE_FILES):
            return Path(c)
    raise WordNetMissing(
        f"WordNet 3.0 not found in {', '.join(candidates)} (METEOR needs it): install Debian's wordnet-base "
        "(apt-get install wordnet-base) or point CTSVQA_WORDNET at a WordNet 3.0 dict/ folder")


def _reader_class():
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    class EnglishWordNet(WordNetCorpusReader):
        def map_wn(self, version="wordnet"):
            # nltk maps synsets to the "wordnet" corpus of nltk_data for the multilingual (OMW) functions;
            # METEOR uses English synonyms only, and that mapping would need nltk_data and index.sense.
            return None

    return EnglishWordNet


@lru_cache(maxsize=1)
def wordnet():
    """nltk's WordNetCorpusReader over the local WordNet 3.0 database."""
    import nltk

    source = find_database()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ctsvqa"
    root = cache / f"wordnet-{hashlib.sha256(str(source.resolve()).encode()).hexdigest()[:12]}"
    if not (root / "lexnames").is_file():
        cache.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".wordnet-", dir=cache))
        for name in os.listdir(source):
            if (source / name).is_file():
                shutil.copyfile(source / name, staging / name)
        (staging / "lexnames").write_text("".join(
            f"{i:02d}\t{name}\t{_POS_NUMBER[name.split('.')[0]]}\n" for i, name in enumerate(LEXNAMES)))
        try:
            staging.rename(root)                     # atomic: a concurrent process may have won the race
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
    nltk.data.path.append(str(root))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")              # "multilingual functions not available": not used
        reader = _reader_class()(str(root), None)
    return reader
