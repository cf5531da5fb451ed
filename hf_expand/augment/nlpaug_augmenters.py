"""The per-sentence augmenters, each a thin wrapper around an nlpaug augmenter.

nlpaug draws from Python's global ``random`` (the augmenters exposed here never touch NumPy's global
generator: see ``BaseAugmenter.sample``), so before every sentence we seed it from that sentence's own seed:
the result depends on (text, seed) only, never on what ran before it.
"""

from __future__ import annotations

import random

from .specs import AugmenterType, count, share, Param


class NlpaugRows:
    """Backend: one nlpaug call per text, reseeded per text.

    It calls the augmenter's action method (``aug.swap(text)`` ...) the way ``aug.augment(text)`` does for one
    string, without its per-call dispatch, so the per-row seeding is paid for.
    """

    def __init__(self, aug):
        self.aug = aug
        self.action = getattr(aug, aug.action)
        if aug.action == "crop":
            self.action = self._crop

    def _crop(self, text: str) -> str:
        """nlpaug 1.1.11's crop raises when it would cut one word "to the right" (``tokens[:0]`` is empty:
        ``random.sample([], 1)``): then cut one word at a seeded random position ourselves."""
        try:
            return self.aug.crop(text)
        except ValueError:
            tokens = self.aug.tokenizer(text)
            if len(tokens) <= 1:
                return text
            i = random.randrange(len(tokens))
            return self.aug.reverse_tokenizer(tokens[:i] + tokens[i + 1:])

    def augment(self, texts: list[str], seeds: list[int]) -> list[str]:
        saved = random.getstate()  # the caller's random state is theirs: restored below
        try:
            return self._augment(texts, seeds)
        finally:
            random.setstate(saved)

    def _augment(self, texts: list[str], seeds: list[int]) -> list[str]:
        out = []
        for text, seed in zip(texts, seeds):
            random.seed(seed)
            result = self.action(self.aug.clean(text)) if text else text
            if isinstance(result, list):  # some actions return (text, details) or lists
                result = result[0] if result else text
            out.append(result if isinstance(result, str) and result else text)
        return out


def _word_kwargs(p: dict) -> dict:
    return {"aug_p": p["p"], "aug_min": p["min"], "aug_max": p["max"]}


def _char_kwargs(p: dict) -> dict:
    return {"aug_char_p": p["p"], "aug_word_p": p["word_p"], "aug_char_max": p["max_chars"], "aug_word_max": p["max_words"]}


def _synonym(p):
    import nlpaug.augmenter.word as naw

    from . import wordnet

    wordnet.ensure_wordnet()
    aug = naw.SynonymAug(aug_src="wordnet", **_word_kwargs(p))
    aug.model.pos_tag = wordnet.pos_tag  # nltk.pos_tag's model cannot be downloaded here
    return NlpaugRows(aug)


def _random_word(action):
    def build(p):
        import nlpaug.augmenter.word as naw

        extra = {"target_words": [p["word"]]} if action == "substitute" else {}
        return NlpaugRows(naw.RandomWordAug(action=action, **_word_kwargs(p), **extra))

    return build


def _spelling(p):
    import nlpaug.augmenter.word as naw

    return NlpaugRows(naw.SpellingAug(**_word_kwargs(p)))  # nlpaug's bundled English misspelling list


def _keyboard(p):
    import nlpaug.augmenter.char as nac

    return NlpaugRows(nac.KeyboardAug(**_char_kwargs(p)))


def _ocr(p):
    import nlpaug.augmenter.char as nac

    return NlpaugRows(nac.OcrAug(**_char_kwargs(p)))


def _random_char(p):
    import nlpaug.augmenter.char as nac

    return NlpaugRows(nac.RandomCharAug(action=p["action"], **_char_kwargs(p)))


WORD_PARAMS = (
    share("p", 0.3, "share of words changed"),
    count("min", 1, "at least this many words changed", minimum=0),
    count("max", 10, "at most this many words changed"),
)
CHAR_PARAMS = (
    share("p", 0.3, "share of characters changed in a chosen word"),
    share("word_p", 0.3, "share of words chosen"),
    count("max_chars", 10, "at most this many characters changed per word"),
    count("max_words", 10, "at most this many words changed"),
)
CHAR_ACTIONS = ("insert", "substitute", "swap", "delete")

TYPES = [
    AugmenterType("synonym", "replace words with WordNet synonyms (offline)", WORD_PARAMS, _synonym),
    AugmenterType("random_swap", "swap neighbouring words", WORD_PARAMS, _random_word("swap")),
    AugmenterType("random_delete", "delete words", WORD_PARAMS, _random_word("delete")),
    AugmenterType("random_crop", "delete a run of consecutive words", WORD_PARAMS, _random_word("crop")),
    AugmenterType("random_substitute", "replace words with a fixed word", WORD_PARAMS
                  + (Param("word", str, "_", "the replacement word"),), _random_word("substitute")),
    AugmenterType("spelling", "common English misspellings", WORD_PARAMS, _spelling),
    AugmenterType("keyboard", "keyboard-distance typos", CHAR_PARAMS, _keyboard),
    AugmenterType("ocr", "OCR confusions (0/o, 1/l, ...)", CHAR_PARAMS, _ocr),
    AugmenterType("random_char", "random character edits", CHAR_PARAMS
                  + (Param("action", str, "substitute", "insert, substitute, swap or delete",
                           lambda v: v in CHAR_ACTIONS, "one of " + ", ".join(CHAR_ACTIONS)),), _random_char),
]


def patch_nlpaug_for_transformers5() -> None:
    """nlpaug 1.1.11's language models call ``tokenizer._convert_token_to_id`` / ``_convert_id_to_token``,
    which transformers 5 removed; route them to the public API. Idempotent. (Only the benchmark's
    baseline needs this: our contextual augmenter does not use nlpaug's model classes.)"""
    import nlpaug.model.lang_models as nml

    for cls in (nml.Bert, nml.DistilBert, nml.Roberta, nml.FmTransformers):
        tokenizer_of = (lambda self: self.model.tokenizer) if cls is nml.FmTransformers else (lambda self: self.tokenizer)
        cls.token2id = lambda self, token, _t=tokenizer_of: _t(self).convert_tokens_to_ids(token)
        cls.id2token = lambda self, _id, _t=tokenizer_of: _t(self).convert_ids_to_tokens(int(_id))
