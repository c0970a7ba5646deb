"""METEOR (nltk), and the offline WordNet its synonym matching needs: nothing is downloaded.

Sources, first usable wins: a dictionary folder named in ``QUANTTUNE_WORDNET``, nltk's own data
(corpora/wordnet or wordnet.zip, as ``nltk.download("wordnet")`` leaves it), then Debian's
wordnet-base (/usr/share/wordnet). A plain WordNet "dict" folder such as Debian's lacks two files
nltk's reader wants: ``lexnames`` (a fixed table, written here into a copy in the app's cache) and
``index.sense`` (only needed to map other WordNet versions onto 3.0 for multilingual lookups,
which METEOR never makes: the reader below skips that mapping).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import threading
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ENV_VAR = "QUANTTUNE_WORDNET"
DEBIAN_DICT = Path("/usr/share/wordnet")
NOT_INSTALLED = (
    "METEOR needs the WordNet dictionary, which is not installed. "
    "Install it (Debian/Ubuntu: apt install wordnet-base) and evaluate again."
)

# What the reader opens at start-up: the four parts of speech' index, data and exception lists.
_POS = ("noun", "verb", "adj", "adv")
REQUIRED = tuple(f"{kind}.{pos}" for kind in ("index", "data") for pos in _POS) + tuple(
    f"{pos}.exc" for pos in _POS
)
_OPTIONAL = ("cntlist.rev", "index.sense")

# WordNet's 45 lexicographer files (lexnames(5WN), unchanged since WordNet 2.0): number, name,
# syntactic category (1 noun, 2 verb, 3 adjective, 4 adverb).
_LEXNAMES = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact",
    "noun.attribute", "noun.body", "noun.cognition", "noun.communication", "noun.event", "noun.feeling",
    "noun.food", "noun.group", "noun.location", "noun.motive", "noun.object", "noun.person",
    "noun.phenomenon", "noun.plant", "noun.possession", "noun.process", "noun.quantity", "noun.relation",
    "noun.shape", "noun.state", "noun.substance", "noun.time", "verb.body", "verb.change",
    "verb.cognition", "verb.communication", "verb.competition", "verb.consumption", "verb.contact",
    "verb.creation", "verb.emotion", "verb.motion", "verb.perception", "verb.possession", "verb.social",
    "verb.stative", "verb.weather", "adj.ppl",
)  # fmt: skip
_CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}

# Words, and punctuation marks as tokens of their own, like nltk's word_tokenize (which needs the
# punkt download); nltk 3.9+ wants METEOR's input already split.
_METEOR_TOKEN = re.compile(r"\w+(?:['’]\w+)*|[^\w\s]")

_lock = threading.Lock()
_reader: Any = None  # loading takes seconds, so the first good reader is kept for the process


def find_wordnet() -> Any:
    """nltk's WordNetCorpusReader over the first offline WordNet found, or None if there is none.

    A found reader is cached; a miss is not, so installing WordNet works without a restart."""
    global _reader
    with _lock:
        if _reader is None:
            _reader = _load_first()
        return _reader


def meteor_per_example(
    references: Sequence[Sequence[str]], predictions: Sequence[str], wordnet: Any
) -> list[float]:
    """nltk's METEOR for each prediction against its accepted references (the best one counts).

    ``wordnet``: a reader from find_wordnet(), or anything with nltk's ``synsets(word)``."""
    from nltk.translate.meteor_score import meteor_score

    split = _METEOR_TOKEN.findall
    return [
        float(meteor_score([split(r) for r in refs], split(p), wordnet=wordnet))
        for refs, p in zip(references, predictions, strict=True)
    ]


def why_no_wordnet() -> str:
    """The reason METEOR has no value, for the results table (call when find_wordnet() is None)."""
    named = os.environ.get(ENV_VAR, "").strip()
    if named and _missing_files(Path(named)):
        return (
            f"{ENV_VAR} names {named}, which is not a WordNet dictionary folder (it needs "
            f"{', '.join(REQUIRED)}). " + NOT_INSTALLED
        )
    return NOT_INSTALLED


def _load_first() -> Any:
    from nltk.corpus.reader.wordnet import WordNetError

    for make_root in _candidate_roots():
        try:
            return _open_reader(make_root())
        except (OSError, LookupError, ValueError, WordNetError):
            continue  # absent, damaged or partial: try the next source
    return None


def _candidate_roots() -> list[Callable[[], Any]]:
    """Makers of the roots to try, in order; each runs only when reached (a copy costs)."""
    named = os.environ.get(ENV_VAR, "").strip()
    makers: list[Callable[[], Any]] = []
    if named:
        makers.append(lambda: _readable_folder(Path(named)))
    # nltk.data.find searches nltk's data path only; unlike nltk.corpus.wordnet it never offers a
    # download. The zip is what nltk.download leaves when it does not unpack.
    makers += [lambda: _nltk_data("corpora/wordnet"), lambda: _nltk_data("corpora/wordnet.zip/wordnet/")]
    makers.append(lambda: _readable_folder(DEBIAN_DICT))
    return makers


def _nltk_data(resource: str) -> Any:
    import nltk.data

    return nltk.data.find(resource)


def _missing_files(folder: Path) -> list[str]:
    return [name for name in REQUIRED if not (folder / name).is_file()]


def _readable_folder(folder: Path) -> Path:
    """``folder`` itself when it has lexnames, else a copy with lexnames in the app's cache."""
    if _missing_files(folder):
        raise FileNotFoundError(f"{folder} is not a WordNet dictionary folder")
    root = folder if (folder / "lexnames").is_file() else _copy_with_lexnames(folder)
    _allow_root(root)
    return root


def _allow_root(root: Path) -> None:
    import nltk.data

    # nltk 3.10 opens corpus files only under a folder on its data path (a guard against path
    # tricks); the reader opens its files for as long as it lives, so the folder joins for good.
    if str(root) not in map(str, nltk.data.path):
        nltk.data.path.append(str(root))


def _copy_with_lexnames(folder: Path) -> Path:
    """A copy (about 28 MB, once) of the dictionary plus a generated lexnames, written atomically.

    Keyed by the source folder's path: WordNet 3.0's files have not changed since 2006."""
    from core.paths import cache_dir

    key = hashlib.sha1(str(folder.resolve()).encode()).hexdigest()[:12]
    target = cache_dir() / "wordnet" / key
    if (target / "lexnames").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=target.parent))
    try:
        for name in REQUIRED + _OPTIONAL:
            if (folder / name).is_file():
                shutil.copyfile(folder / name, staging / name)
        lines = (f"{i:02d}\t{name}\t{_CATEGORY[name.split('.')[0]]}\n" for i, name in enumerate(_LEXNAMES))
        (staging / "lexnames").write_text("".join(lines), encoding="utf-8")
        os.replace(staging, target)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not (target / "lexnames").is_file():  # another process may have won the race
            raise
    return target


def _open_reader(root: Any) -> Any:
    reader_class = _english_reader_class()
    with warnings.catch_warnings():
        # Without the multilingual OMW data nltk warns that those functions are off; METEOR
        # needs only English synonyms, so the warning says nothing useful here.
        warnings.filterwarnings("ignore", message="The multilingual functions are not available")
        reader = reader_class(str(root) if isinstance(root, Path) else root, None)
    if not reader.synsets("dog"):
        raise ValueError(f"{root} holds no usable WordNet data")
    return reader


def _english_reader_class() -> type:
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    class EnglishWordNet(WordNetCorpusReader):
        """nltk's reader without the map onto WordNet 3.0, which only multilingual lookups use and
        which needs index.sense (Debian ships it in a separate package)."""

        def map_wn(self, version: str = "wordnet") -> None:
            return None

    return EnglishWordNet
