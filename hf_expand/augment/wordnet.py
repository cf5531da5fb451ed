"""Offline WordNet for the ``synonym`` augmenter, built from Debian's WordNet 3.0 packages.

NLTK reads WordNet from ``<nltk_data>/corpora/wordnet/``. We cannot download it here, but Debian ships the
same database (``apt-get install wordnet-base wordnet-sense-index`` puts it in ``/usr/share/wordnet``).
Three traps, each handled below:

* NLTK 3.10 refuses symlinked data folders, so the files are *copied* into an NLTK data layout;
* Debian ships no ``lexnames`` file (the list of lexicographer files), which NLTK's reader opens first,
  so we write it from the table documented in ``lexnames(5WN)``;
* nlpaug tags words with ``nltk.pos_tag``, whose tagger model cannot be downloaded either: we tag with the
  lexicon-based tagger that textblob's wheel ships instead (:func:`pos_tag`).

``hf-expand setup-wordnet`` runs :func:`install_wordnet`; the synonym augmenter calls :func:`ensure_wordnet`,
which installs automatically when the Debian files are present.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from ..errors import HfExpandError

DEBIAN_WORDNET = Path("/usr/share/wordnet")
SETUP_HINT = "apt-get install wordnet-base wordnet-sense-index && hf-expand setup-wordnet"

# lexnames(5WN): file number, name, syntactic category (1 noun, 2 verb, 3 adjective, 4 adverb), in order.
_LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body "
    "noun.cognition noun.communication noun.event noun.feeling noun.food noun.group noun.location "
    "noun.motive noun.object noun.person noun.phenomenon noun.plant noun.possession noun.process "
    "noun.quantity noun.relation noun.shape noun.state noun.substance noun.time verb.body verb.change "
    "verb.cognition verb.communication verb.competition verb.consumption verb.contact verb.creation "
    "verb.emotion verb.motion verb.perception verb.possession verb.social verb.stative verb.weather adj.ppl"
).split()
_CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}
# What NLTK's WordNetCorpusReader opens (index.sense is optional but lets lemma keys resolve).
_REQUIRED = ["index.noun", "index.verb", "index.adj", "index.adv",
             "data.noun", "data.verb", "data.adj", "data.adv",
             "noun.exc", "verb.exc", "adj.exc", "adv.exc"]


def data_dir() -> Path:
    """Where hf_expand keeps its NLTK data (``$HF_EXPAND_NLTK_DATA``, default ``~/.cache/hf_expand/nltk_data``)."""
    env = os.environ.get("HF_EXPAND_NLTK_DATA")
    return Path(env) if env else Path.home() / ".cache" / "hf_expand" / "nltk_data"


def lexnames_text() -> str:
    return "".join(f"{i:02d}\t{name}\t{_CATEGORY[name.split('.')[0]]}\n" for i, name in enumerate(_LEXNAMES))


MARKER = ".installed-by-hf-expand"


def install_wordnet(source: str | os.PathLike = DEBIAN_WORDNET, target: str | os.PathLike | None = None,
                    overwrite: bool = False) -> Path:
    """Copy a WordNet 3.0 database (Debian layout) into an NLTK data folder; return that data folder.

    Written to a temporary sibling and renamed into place, so an interrupted install leaves nothing half-done.
    An existing ``corpora/wordnet`` is replaced if hf_expand wrote it (or it is empty), a WordNet installed
    otherwise only with ``overwrite``, any other folder never (see ``hf_expand.output``).
    """
    source = Path(source)
    missing = [name for name in _REQUIRED if not (source / name).is_file()]
    if missing:
        raise HfExpandError(f"WordNet files missing from {source} ({', '.join(missing[:3])}...); run: {SETUP_HINT}")
    root = Path(target) if target is not None else data_dir()
    corpora = root / "corpora"
    final = corpora / "wordnet"
    for path in (root, corpora, final):
        if path.exists() and not path.is_dir() and not path.is_symlink():
            raise HfExpandError(f"{path} is a file, not a folder; choose another --target")
    from ..output import atomic_output_dir, clean_leftovers, written_by_hf_expand

    # Our own install (or an empty folder) is replaced freely; a WordNet someone else installed (NLTK's
    # download) with --overwrite; anything else never (output.py's rules, with this folder's markers).
    markers = (MARKER, "index.noun") if overwrite else (MARKER,)
    if final.is_dir() and not final.is_symlink() and not written_by_hf_expand(final, (MARKER,)):
        if not (final / "index.noun").is_file():
            raise HfExpandError(f"{final} was not written by hf-expand and holds no WordNet database; refusing to "
                                f"replace it even with --overwrite; remove it yourself or choose another --target")
        if not overwrite:
            raise HfExpandError(f"{final} exists and was not written by hf-expand; pass --overwrite to replace it "
                                f"or choose another --target")
    clean_leftovers(corpora, [".wordnet-*"])  # temp folders of older versions killed mid-install
    with atomic_output_dir(final, overwrite=True, markers=markers, flag="--target") as tmp:
        for path in source.iterdir():
            if path.is_file():
                shutil.copyfile(path, tmp / path.name)  # copies, never symlinks (NLTK refuses those)
        if not (tmp / "lexnames").exists():
            (tmp / "lexnames").write_text(lexnames_text())
        (tmp / MARKER).write_text(f"copied from {source}\n")
    return root


def _installed(root: Path) -> bool:
    folder = root / "corpora" / "wordnet"
    return all((folder / name).is_file() for name in ["lexnames", *_REQUIRED])


_fork_hook_registered = False


def _reopen_files_after_fork() -> None:
    """NLTK's reader keeps open data files and seeks in them; after a fork, parent and child would share
    one file offset and read each other's positions (garbage synsets, silently or as crashes). Dropping the
    handles in the child makes it open its own."""
    reader = sys.modules.get("nltk.corpus").wordnet if "nltk.corpus" in sys.modules else None
    files = getattr(reader, "__dict__", {}).get("_data_file_map")  # only if the lazy reader was loaded
    if isinstance(files, dict):
        reader._data_file_map = {}


def ensure_wordnet():
    """Return NLTK's WordNet reader, installing the Debian copy into :func:`data_dir` on first use."""
    try:
        import nltk
        from nltk.corpus import wordnet
    except ImportError:
        raise HfExpandError("the synonym augmenter needs nltk; run: pip install 'hf-expand[augment]'") from None
    root = data_dir()
    if not _installed(root):
        if not all((DEBIAN_WORDNET / name).is_file() for name in _REQUIRED):
            try:  # a WordNet the user installed through nltk.download works too
                wordnet.ensure_loaded()
                return wordnet
            except LookupError:
                raise HfExpandError(f"WordNet is not installed; run: {SETUP_HINT}") from None
        install_wordnet(DEBIAN_WORDNET, root)
    if str(root) not in nltk.data.path:
        nltk.data.path.insert(0, str(root))
    wordnet.ensure_loaded()
    global _fork_hook_registered
    if not _fork_hook_registered:
        os.register_at_fork(after_in_child=_reopen_files_after_fork)
        _fork_hook_registered = True
    return wordnet


def pos_tag(tokens: list[str]) -> list[tuple[str, str]]:
    """Penn Treebank tags for ``tokens`` (drop-in for ``nltk.pos_tag``), from textblob's bundled lexicon."""
    try:
        from textblob.en import tag
    except ImportError:
        raise HfExpandError("the synonym augmenter needs textblob's tagger; run: pip install 'hf-expand[augment]'") from None
    if not tokens:
        return []
    if all(t and not any(c.isspace() for c in t) for t in tokens):
        tagged = tag(" ".join(tokens), tokenize=False)  # in context: one tag per space-separated token
    else:  # empty tokens or tokens with inner spaces would shift the alignment: tag one by one
        tagged = [(t, (tag(t, tokenize=False) or [(t, "NN")])[0][1]) for t in tokens]
    return [(token, tg) for token, (_, tg) in zip(tokens, tagged)]
