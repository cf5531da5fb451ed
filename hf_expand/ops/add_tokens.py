"""add_tokens: new tokens in the tokenizer, new rows in the input and output embeddings.

The old tokenizer's ids are kept and each new token gets one new id after them (``len(tokenizer)``
onwards). Its embedding starts as the mean of the embeddings of the pieces the old tokenizer split it
into (the overall mean when it has none), so the model first reads a new token roughly as it read its
pieces. Old rows are untouched: inputs made of old tokens give the same outputs, and old tokens'
logits are unchanged.

An LM's output distribution does change, since new logits join the softmax. With
``output_init="pieces"`` (default) a new token's output row is also its pieces' mean (it is predicted
about as often as its pieces); ``output_init="mean"`` uses the mean of all output rows instead, which
bounds the probability each new token takes by ``1 / vocab`` of the old mass (Jensen: exp(mean logit) <=
mean exp(logit)), keeping the total near zero. The report measures that mass on the probe inputs. A tied
embedding has one row for both uses: ``output_init`` decides it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..architectures import ModelLayout, describe
from ..errors import HfExpandError
from ..plan import Plan, SetRows, TensorStep
from . import register
from .common import check_multiple, updated_config

OUTPUT_INITS = ("pieces", "mean")
MAX_TOKENS = 1_000_000


@register
@dataclass(frozen=True)
class AddTokens:
    """Add ``tokens`` to ``tokenizer`` (the model's) and grow the embeddings; see the module doc."""

    name: ClassVar[str] = "add_tokens"
    tokens: tuple[str, ...]
    tokenizer: Any = field(default=None, compare=False, repr=False)
    output_init: str = "pieces"
    special: bool = False  # added as special tokens (chat/tool markers): decode(skip_special_tokens=True) drops them
    pad_to_multiple_of: int | None = None  # embedding rows rounded up (as resize_token_embeddings has it)

    def __post_init__(self):
        tokens = (self.tokens,) if isinstance(self.tokens, str) else tuple(self.tokens)
        if not tokens:
            raise HfExpandError("--add-tokens needs at least one token (or a non-empty --add-tokens-file)")
        if any(not isinstance(t, str) or not t.strip() for t in tokens):
            raise HfExpandError("--add-tokens: tokens must be non-empty strings without surrounding space only")
        if len(tokens) > MAX_TOKENS:
            raise HfExpandError(f"--add-tokens: {len(tokens)} tokens is more than {MAX_TOKENS}; is that the right file?")
        if self.output_init not in OUTPUT_INITS:
            raise HfExpandError(f"--new-token-output must be one of {', '.join(OUTPUT_INITS)}, got {self.output_init!r}")
        object.__setattr__(self, "tokens", tuple(dict.fromkeys(tokens)))  # drop repeats, keep order
        check_multiple(self, "pad_to_multiple_of", "--pad-to-multiple-of", "64")

    def split(self) -> tuple[list[str], list[str]]:
        """(tokens to add, tokens the tokenizer already has)."""
        if self.tokenizer is None:
            raise HfExpandError("add_tokens needs the model's tokenizer: AddTokens(tokens, tokenizer=...) "
                                "(the CLI loads it from the source)")
        vocab = self.tokenizer.get_vocab()
        unk = self.tokenizer.unk_token_id

        def present(t: str) -> bool:
            # In the vocabulary as written, or already one token after normalisation (uncased "Hello" -> "hello").
            ids = self.tokenizer(t, add_special_tokens=False)["input_ids"]
            return t in vocab or (len(ids) == 1 and ids[0] != unk)

        flags = [present(t) for t in self.tokens]
        return [t for t, f in zip(self.tokens, flags) if not f], [t for t, f in zip(self.tokens, flags) if f]

    def plan(self, config, layout: ModelLayout) -> Plan:
        new, present = self.split()
        if not new:
            raise HfExpandError(f"--add-tokens: every token is already in the vocabulary ({present[:10]}); nothing to add")
        tok = self.tokenizer
        base, V = len(tok), int(config.vocab_size)
        if base > V:
            raise HfExpandError(
                f"--add-tokens: the tokenizer has {base} ids but the model only {V} embedding rows; "
                "the tokenizer does not belong to this model"
            )
        ids = list(range(base, base + len(new)))
        size = max(V, base + len(new))
        if self.pad_to_multiple_of:  # rows no token uses yet, for kernels that want a multiple (64, 128)
            m = self.pad_to_multiple_of
            size = max(V, -(-(base + len(new)) // m) * m)
        pads = tuple(range(max(V, base + len(new)), size))  # padding rows: the mean row, outputs excluded
        pieces = []
        for t in new:
            p = tuple(i for i in tok(t, add_special_tokens=False)["input_ids"] if 0 <= i < V)
            pieces.append(p)
        rows_in = tuple(zip(ids, pieces)) + tuple((i, ()) for i in pads)
        rows_out = rows_in if self.output_init == "pieces" else tuple((i, ()) for i in (*ids, *pads))

        new_config = updated_config(config, {"vocab_size": size})
        # Which tensors have a vocabulary axis: compare with a model one token larger (works when the
        # vocabulary is padded and does not grow, too).
        probe = describe(updated_config(config, {"vocab_size": size + 1}), layout.model_cls)
        tied = layout.output_embedding in layout.tied if layout.output_embedding else False
        steps, new_slices = [], {}
        for name, p in layout.params.items():
            axes = [a for a, (x, y) in enumerate(zip(p.shape, probe.params[name].shape)) if x != y]
            if not axes:
                steps.append(TensorStep(name, name, p.shape, p.shape))
                continue
            axis = axes[0]
            output_side = name == layout.output_embedding or (len(p.shape) == 1 and name != layout.input_embedding)
            rows = rows_out if output_side or tied else rows_in
            shape = tuple(size if a == axis else d for a, d in enumerate(p.shape))
            steps.append(TensorStep(name, name, p.shape, shape, (SetRows(axis, size, rows),)))
            new_slices[name] = [{"axis": axis, "start": ids[0], "stop": ids[-1] + 1}]
            if pads:
                if pads[0] == ids[-1] + 1:
                    new_slices[name][0]["stop"] = size
                else:  # a padded vocabulary's unused rows lie between (old rows, unchanged)
                    new_slices[name].append({"axis": axis, "start": pads[0], "stop": size})

        grown_tok = copy.deepcopy(tok)
        if self.special:  # whole, never normalised or split, and dropped by decode(skip_special_tokens=True)
            from tokenizers import AddedToken

            grown_tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in new], special_tokens=True)
        else:
            grown_tok.add_tokens(new)
        got = grown_tok.convert_tokens_to_ids(new)
        if list(got) != ids:  # pragma: no cover - a tokenizer with holes in its ids
            raise HfExpandError(f"--add-tokens: the tokenizer gave ids {got[:5]}…, expected {ids[:5]}…; cannot align embeddings")
        notes = [f"{len(new)} new token(s) get ids {ids[0]}..{ids[-1]}"]
        if pads:
            notes.append(f"{len(pads)} padding row(s) {pads[0]}..{pads[-1]} round the vocabulary up to {size} "
                         f"(a multiple of {self.pad_to_multiple_of}); no token uses them, their outputs are excluded")
        if ids[0] < V:
            notes.append(f"the vocabulary was padded: ids {ids[0]}..{min(ids[-1], V - 1)} were unused rows and now "
                         "hold the new tokens (their old logits are excluded from verification)")
        if present:
            notes.append(f"already in the vocabulary, not added: {present[:20]}" + (" …" if len(present) > 20 else ""))
        empty = [t for t, p in zip(new, pieces) if not p]
        if empty:
            notes.append(f"no old pieces for {empty[:10]}: their rows start at the mean embedding")
        return Plan(
            op=self.name,
            params={"tokens": new, "already_present": present, "output_init": self.output_init,
                    **({"special": True} if self.special else {}),
                    **({"pad_to_multiple_of": self.pad_to_multiple_of} if self.pad_to_multiple_of else {})},
            summary=f"vocab {V} -> {size}: + {len(new)} token(s)" + (f", {len(present)} already present" if present else ""),
            config_updates={"vocab_size": size} if size != V else {},
            new_config=new_config,
            steps=steps,
            new_slices=new_slices,
            notes=notes,
            new_outputs=(ids[0], size if pads else ids[-1] + 1) if layout.output_embedding else None,
            extra_files={"tokenizer": grown_tok},
        )
