"""Where each architecture family keeps its tensors, and which dimension of each belongs to which space.

Architectures are data, not classes. For a config we combine

* what transformers already tells us: the decoder/encoder block list (found on a meta-device model),
  ``attribute_map`` (``n_layer`` -> ``num_hidden_layers``), ``base_model_tp_plan`` (a ``colwise``
  projection grows along its output rows, a ``rowwise`` one along its input columns, and rowwise
  projections are the ones that write into the residual stream), GPT-2's transposed ``Conv1D``
  modules, 3-D MoE expert parameters;
* a small JSON file per family under ``data/`` for the rest: which config field sizes each FFN, the
  roles of modules the tp plan does not list, fused (packed) projections, post-norm blocks, and
  growth that a family's config cannot express.

A family with no data file has its layout inferred from transformers (:mod:`.infer`); the result is
trusted only because every growth is verified. A data file with ``"infer": true`` keeps the inference and
adds refusals.

Data file keys (see :class:`FamilyData`): ``ffn`` (FFN spaces: the sizing ``field`` and a module ``prefix``
or ``modules`` list), ``roles`` (``in``: writes a space, ``out``: reads it back into the residual stream; a name ending in ``?`` is a
module some configs do not build),
``packed`` (stacked projections), ``qkv_sections``, ``post_norm``, ``head_norms``, ``norm_offset``,
``embed_scale``, ``hidden_sized_fields``, ``layer_index_fields``, ``layer_threshold_fields``, ``refuse``
(``op``, optional ``field`` and ``allowed`` values, ``why``), ``infer``, ``comment``, ``like`` (another family
whose file this one repeats: its keys, then this file's own on top), ``stacks`` (encoder-decoders: each block
stack's name, layer-count field, post-norm and first-block-only tensors; an FFN group may name its ``stack``).

An encoder-decoder (T5, BART) has two block stacks. ``describe(config)`` then numbers each stack's blocks
from 0 and records the stack in :attr:`ParamInfo.block`; ``describe(config, stack="decoder")`` is the view
the depth operations take of one stack: its blocks are the layout's blocks, the other stack's tensors are
outside them.

``describe(config)`` returns a :class:`ModelLayout` listing every parameter with its layer index,
role and grow axis. Growth operations read only this layout, never model classes.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ..errors import HfExpandError, UnsupportedArchitecture

DATA_DIR = Path(__file__).parent / "data"

# Size bounds (issue 14): a meta model of 100,000 layers took minutes to build (a dry run never finished), and
# sizes like 2**40 overflow torch's size arithmetic. The largest real models have ~200 layers and sizes < 2**19.
MAX_LAYERS = 2048
MAX_SIZE = 2**20  # any size/count field: hidden, FFN, vocabulary, heads, experts
_SIZE_NAMES = {"n_embd", "n_inner", "d_model", "dim", "hidden_dim", "ffn_dim", "n_head", "n_heads"}

_ALLOWED_KEYS = {
    "ffn", "roles", "packed", "post_norm", "refuse", "layer_index_fields", "layer_threshold_fields", "comment",
    "qkv_sections", "head_norms", "norm_offset", "embed_scale", "hidden_sized_fields", "infer", "transposed", "like",
    "stacks",
}


# what an "infer": true file may add to an inferred layout (describe merges exactly these)
_INFER_FILE_KEYS = {"infer", "comment", "roles", "packed", "refuse", "transposed"}


@dataclass(frozen=True)
class FfnGroup:
    """One FFN space: the config field that sizes it and the layer-relative module prefix it lives under."""

    field: str
    prefix: str = ""  # every role-carrying module under this layer-relative prefix ...
    modules: tuple[str, ...] = ()  # ... or exactly these modules (BERT: no common prefix)
    default_factor_of_hidden: float | None = None  # GPT-2: n_inner=None means 4 * n_embd
    stack: str = ""  # encoder-decoders: the block stack this FFN lives in ("" = every stack: T5's shared d_ff)

    def __post_init__(self):
        object.__setattr__(self, "modules", tuple(self.modules))

    def contains(self, rel: str) -> bool:
        if self.modules:
            return _match(rel, dict.fromkeys(self.modules)) is not None
        return rel.startswith(self.prefix)


@dataclass(frozen=True)
class PostNorm:
    """Post-norm blocks (BERT family): LayerNorm after each residual add, affine included."""

    branch_norms: tuple[str, ...]  # layer-relative norms inside the block, before the final one
    final_norm: str  # layer-relative norm that ends the block
    embed_norm: str  # norm (full-name suffix) that ends the embeddings, i.e. precedes block 0


@dataclass(frozen=True)
class Stack:
    """One block stack of an encoder-decoder: its name (``encoder``/``decoder``, found in the block list's
    qualified name), the config field that counts its blocks, its post-norm layout (BART), and tensors only its
    first block has (T5's relative position bias, computed there and passed up the stack)."""

    name: str
    count_field: str
    post_norm: PostNorm | None = None
    first_block_only: tuple[str, ...] = ()


@dataclass(frozen=True)
class Refusal:
    """``op`` is refused when config ``field`` is not one of ``allowed`` (no field: always refused)."""

    op: str
    field: str | None
    allowed: tuple[Any, ...]
    why: str


@dataclass(frozen=True)
class FamilyData:
    model_type: str
    ffn: tuple[FfnGroup, ...]
    roles: Mapping[str, str]
    packed: Mapping[str, int]
    post_norm: PostNorm | None
    refuse: tuple[Refusal, ...]
    layer_index_fields: tuple[str, ...]  # config lists of layer indices (mlp_only_layers)
    layer_threshold_fields: tuple[str, ...]  # config ints that split the stack at an index (max_window_layers)
    # Fused attention projections: layer-relative module -> the head spaces along its output axis, in
    # order ("q", "kv"; "q*3" = per-head interleaved q,k,v as in GPT-NeoX).
    qkv_sections: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # Norms whose output feeds a tied output embedding (full names without .weight), first present wins.
    head_norms: tuple[str, ...] = ()
    norm_offset: float = 0.0  # Gemma's RMSNorm multiplies by (offset + weight)
    embed_scale: str | None = None  # "sqrt_hidden": embeddings are multiplied by sqrt(hidden_size)
    hidden_sized_fields: tuple[str, ...] = ()  # other config fields equal to the hidden size (OPT's word_embed_proj_dim)
    inferred: bool = False  # no data file: read off transformers (architectures.infer), trusted because verified
    # layer-relative modules whose weights are stored (in, out) like Conv1D (Llama-4's 3-D experts: x @ W)
    transposed: tuple[str, ...] = ()
    stacks: tuple[Stack, ...] = ()  # encoder-decoders: one entry per block stack (see module doc)
    # roles written "name?" in the data file: modules a config may or may not build (T5's wi vs gated wi_0/wi_1)
    optional_roles: frozenset = frozenset()


@dataclass(frozen=True)
class ParamInfo:
    """One parameter of a model, as the growth engine sees it."""

    name: str
    shape: tuple[int, ...]
    layer: int | None  # index in the block list, None outside it
    rel: str  # name relative to the block (or the full name outside blocks)
    role: str | None  # "in" (writes the space: grows along rows), "out" (reads it: columns), None
    ffn_field: str | None  # config field of the FFN space this parameter touches
    parts: int  # packed projections: how many equal chunks the FFN axis holds (gate_up -> 2)
    ffn_axis: int | None  # axis that spans the FFN space, or None
    is_bias: bool
    input_axis: int | None = None  # axis multiplied with the module's input (Linear: -1, Conv1D: 0); None for
    # embeddings, norms and biases

    @property
    def block(self) -> str | None:
        """The qualified name of the block holding this parameter (``model.layers.3``), None outside blocks."""
        return None if self.layer is None else self.name[: -len(self.rel) - 1]


@dataclass(frozen=True)
class ModelLayout:
    """Everything growth needs to know about one model: names, shapes, spaces, block structure."""

    model_type: str
    family: FamilyData
    layers_prefix: str  # e.g. "model.layers" (full parameter names are f"{prefix}.{i}.{rel}")
    num_layers: int
    params: Mapping[str, ParamInfo]
    residual_out: tuple[str, ...]  # layer-relative modules whose output is added to the residual stream
    tied: Mapping[str, str]  # parameter -> the parameter it is tied to (only ties the config turns on)
    model_cls: Any = None  # the class described (growth describes the grown config with the same class)
    input_embedding: str | None = None  # parameter name of the token embedding matrix
    output_embedding: str | None = None  # parameter name of the LM head matrix, if any
    count_field: str = "num_hidden_layers"  # the config field that counts the blocks of ``layers_prefix``
    stack: str | None = None  # encoder-decoders: the stack this view's blocks are (None: both, numbered per stack)

    def layer_params(self, i: int) -> list[ParamInfo]:
        return [p for p in self.params.values() if p.layer == i]


def known_families() -> list[str]:
    return sorted(p.stem for p in DATA_DIR.glob("*.json"))


def has_family_data(model_type: str) -> bool:
    """Whether ``model_type`` has a data file (else its layout is inferred, see :mod:`.infer`)."""
    return (DATA_DIR / f"{model_type}.json").is_file()


def layout_is_inferred(model_type: str) -> bool:
    """No data file, or one with ``"infer": true`` (the layout is inferred; the file only adds refusals)."""
    return not has_family_data(model_type) or family_data(model_type).inferred


@lru_cache(maxsize=None)
def family_data(model_type: str) -> FamilyData:
    path = DATA_DIR / f"{model_type}.json"
    if not path.exists():
        raise UnsupportedArchitecture(
            f"hf_expand has no architecture data for model_type '{model_type}' "
            f"(known: {', '.join(known_families())}); add hf_expand/architectures/data/{model_type}.json"
        )
    raw = json.loads(path.read_text())
    if "like" in raw:  # a family that is another one in transformers (CamemBERT is a RoBERTa)
        raw = {**json.loads((DATA_DIR / f"{raw['like']}.json").read_text()), **raw}
    unknown = set(raw) - _ALLOWED_KEYS
    if unknown:
        raise UnsupportedArchitecture(f"{path.name}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_ALLOWED_KEYS)}")
    if "ffn" not in raw and not raw.get("infer"):  # only an explicit "ffn": [] means "no FFN" (Mamba)
        raise UnsupportedArchitecture(f"{path.name}: no \"ffn\" key; list the FFN groups, or [] for a family without one")
    dropped = set(raw) - _INFER_FILE_KEYS if raw.get("infer") else set()
    if dropped:  # an "infer" file only adds these to the inference; anything else would be ignored
        raise UnsupportedArchitecture(f"{path.name}: key(s) {sorted(dropped)} have no effect with \"infer\": true "
                                      f"(allowed there: {sorted(_INFER_FILE_KEYS)})")
    post = raw.get("post_norm")
    return FamilyData(
        model_type=model_type,
        ffn=tuple(FfnGroup(**g) for g in raw.get("ffn", [])),
        roles={k.rstrip("?"): v for k, v in raw.get("roles", {}).items()},
        packed=dict(raw.get("packed", {})),
        post_norm=_post_norm(post),
        refuse=tuple(Refusal(r["op"], r.get("field"), tuple(r.get("allowed", ())), r["why"]) for r in raw.get("refuse", [])),
        layer_index_fields=tuple(raw.get("layer_index_fields", [])),
        layer_threshold_fields=tuple(raw.get("layer_threshold_fields", [])),
        qkv_sections={k: tuple(v) for k, v in raw.get("qkv_sections", {}).items()},
        head_norms=tuple(raw.get("head_norms", [])),
        norm_offset=float(raw.get("norm_offset", 0.0)),
        embed_scale=raw.get("embed_scale"),
        hidden_sized_fields=tuple(raw.get("hidden_sized_fields", [])),
        inferred=bool(raw.get("infer", False)),
        transposed=tuple(raw.get("transposed", [])),
        optional_roles=frozenset(k.rstrip("?") for k in raw.get("roles", {}) if k.endswith("?")),
        stacks=tuple(Stack(name, st["count_field"], _post_norm(st.get("post_norm")), tuple(st.get("first_block_only", ())))
                     for name, st in raw.get("stacks", {}).items()),
    )


def _post_norm(post: dict | None) -> PostNorm | None:
    return PostNorm(tuple(post["branch_norms"]), post["final_norm"], post["embed_norm"]) if post else None


def roles_from_tp_plan(config) -> tuple[dict[str, str], dict[str, int]]:
    """Per-layer module roles and packing read off ``base_model_tp_plan``.

    ``colwise`` shards the output rows, so the module *writes* a space (role "in" for an FFN: its rows
    grow); ``rowwise`` shards the input columns, so it *reads* a space and writes the residual stream
    (role "out"). ``packed_colwise`` marks fused projections (gate and up stacked: two chunks).
    """
    roles: dict[str, str] = {}
    packed: dict[str, int] = {}
    for pattern, style in (getattr(config, "base_model_tp_plan", None) or {}).items():
        if ".*." not in pattern:
            continue
        rel = pattern.split(".*.", 1)[1]
        if style in ("packed_colwise",):
            roles[rel], packed[rel] = "in", 2
        elif style in ("colwise", "colwise_gather_output", "colwise_rep", "local_colwise"):
            roles[rel] = "in"
        elif style in ("rowwise", "rowwise_split_input", "rowwise_rep", "local_rowwise"):
            roles[rel] = "out"
        elif style not in TP_STYLES_WITHOUT_ROLE:
            raise UnsupportedArchitecture(
                f"{config.model_type}'s tp plan shards {pattern} as {style!r}, a style hf-expand does not know, so "
                f"it cannot tell which space that tensor writes; add hf_expand/architectures/data/"
                f"{config.model_type}.json with its roles, or report this")
    return roles, packed


# tp-plan styles that say how to communicate, not which space a tensor writes: MoE expert dispatch (the
# families' data files give expert roles), replicated or local tensors, embeddings, MLA's latent projection
TP_STYLES_WITHOUT_ROLE = frozenset({
    "grouped_gemm", "ep_dispatch_experts", "moe_tp_experts", "moe_identity_expert", "ep_router", "replicated_with_grad_allreduce",
    "local_params", "all_reduce", "gather", "replicate", "local", "sequence_parallel", "embedding_rowwise",
    "embedding_colwise", "mla_kv_a_proj", "packed_rowwise",
})


def size_problem(config) -> str | None:
    """Why ``config`` is too large (or negative) for hf-expand to build even on the meta device, or None:
    more than :data:`MAX_LAYERS` layers, a size or count field above :data:`MAX_SIZE` or below 0."""
    layers = getattr(config, "num_hidden_layers", None)
    if isinstance(layers, int) and not isinstance(layers, bool) and layers > MAX_LAYERS:
        return f"{layers} layers (num_hidden_layers) is above hf-expand's limit of {MAX_LAYERS:,} layers"
    for key, value in vars(config).items():
        if not isinstance(value, int) or isinstance(value, bool):
            continue
        if not (key.endswith(("_size", "_dim")) or key in _SIZE_NAMES
                or (key.startswith(("num_", "n_")) and key.endswith(("heads", "experts")))) or "chunk" in key:
            continue  # chunk sizes are not tensor sizes (-1 means "off" in some configs)
        if value > MAX_SIZE:
            return f"{key} = {value:,} is above hf-expand's limit of {MAX_SIZE:,}"
        if value < 0:
            return f"{key} = {value} is negative"
    return None


def meta_model(config, model_cls=None) -> nn.Module:
    """The model the config describes (with ``model_cls`` or the head its ``architectures`` names), on
    the meta device: names and shapes, no memory, no weights. Configs beyond :func:`size_problem`'s limits
    are refused first (a grown config too: ``--add-layers`` on a model near the limit)."""
    from ..model_io import auto_class_for

    problem = size_problem(config)
    if problem:
        raise HfExpandError(f"a model with {problem}; nothing is built beyond it (grow less)")

    try:
        with torch.device("meta"):
            if model_cls is not None:
                return model_cls(config)
            return auto_class_for(config).from_config(config)
    except ValueError as exc:  # the modelling code's own check of the (grown) config, e.g. heads vs hidden size
        name = getattr(model_cls, "__name__", None) or (getattr(config, "architectures", None) or [config.model_type])[0]
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UnsupportedArchitecture(f"transformers cannot build {name} with this config: {first}") from None


def _has_submodule(module: nn.Module, rel: str) -> bool:
    try:
        module.get_submodule(rel)
    except AttributeError:
        return False
    return True


def _find_block_list(model: nn.Module, num_layers: int, stack: str | None = None) -> str:
    """The qualified name of the ModuleList holding the transformer blocks (the largest list of that length;
    ``stack``: one whose qualified name has that component, e.g. ``decoder``)."""
    best, best_size = None, -1
    for name, mod in model.named_modules():
        if stack is not None and stack not in name.split("."):
            continue
        if isinstance(mod, nn.ModuleList) and len(mod) == num_layers and num_layers > 0:
            size = sum(p.numel() for p in mod.parameters())
            if size > best_size:
                best, best_size = name, size
    if best is None:
        raise UnsupportedArchitecture(
            f"could not find the list of {num_layers} {stack + ' ' if stack else ''}transformer blocks in "
            f"{type(model).__name__}"
        )
    return best


def _match(rel: str, table: Mapping[str, Any]) -> str | None:
    """The key of ``table`` naming the module (or parameter) that ``rel`` belongs to."""
    for key in table:
        if rel == key or rel.startswith(key + "."):
            return key
    return None


def encoder_decoder_problem(config) -> str | None:
    """Why an encoder-decoder cannot be grown (its family has no ``stacks`` data), or None."""
    if not is_encoder_decoder(config):
        return None
    if has_family_data(config.model_type) and family_data(config.model_type).stacks:
        return None
    return (f"this is an encoder-decoder model (an encoder and a decoder block stack joined by cross-attention) of "
            f"type '{config.model_type}', and hf-expand has no data on its two stacks; encoder-decoders grow from a "
            f"data file with \"stacks\" (as hf_expand/architectures/data/t5.json and bart.json have): add "
            f"hf_expand/architectures/data/{config.model_type}.json")


def is_encoder_decoder(config) -> bool:
    return bool(getattr(config, "is_encoder_decoder", False))


def stack_names(config) -> tuple[str, ...]:
    """The block stacks of an encoder-decoder (``("encoder", "decoder")``), or () for one block stack."""
    if not is_encoder_decoder(config) or encoder_decoder_problem(config):
        return ()
    return tuple(st.name for st in family_data(config.model_type).stacks)


def main_blocks(config) -> tuple[int, str | None]:
    """(block count, stack name) of the block list a model's blocks are, for the certificate: the decoder of an
    encoder-decoder (whose outputs are the model's), else the one block stack (``num_hidden_layers``)."""
    from ..multimodal import text_of

    text = text_of(config)
    if stack_names(text):
        last = family_data(text.model_type).stacks[-1]
        return int(getattr(text, last.count_field)), last.name
    return int(text.num_hidden_layers), None


def _block_lists(config, model, family, stack: str | None) -> list[tuple[str, Stack | None]]:
    """(qualified name, stack) of every block list; the last is the one a combined view calls its blocks."""
    if not family.stacks:
        if stack is not None:
            raise HfExpandError(f"{config.model_type} has one block stack; there is no {stack!r} stack to describe")
        return [(_find_block_list(model, int(config.num_hidden_layers)), None)]
    if stack is not None and stack not in {st.name for st in family.stacks}:
        raise HfExpandError(f"{config.model_type} has no block stack named {stack!r} "
                            f"(it has {', '.join(st.name for st in family.stacks)})")
    found, missing = [], []
    for st in family.stacks:
        try:
            found.append((_find_block_list(model, int(getattr(config, st.count_field)), st.name), st))
        except UnsupportedArchitecture:
            missing.append(st.name)
    if missing:  # T5EncoderModel, BartForCausalLM: one stack of the pair
        raise UnsupportedArchitecture(
            f"{type(model).__name__} holds only part of {config.model_type}'s block stacks (no {', '.join(missing)}); "
            f"hf-expand grows {config.model_type} as the whole encoder-decoder (e.g. "
            f"{config.model_type.upper()}ForConditionalGeneration) and cannot grow this class yet")
    return found


def describe(config, model_cls=None, stack: str | None = None) -> ModelLayout:
    """Build the :class:`ModelLayout` of ``config`` from a meta-device model (of ``model_cls`` if given).
    ``stack``: an encoder-decoder's view of one block stack (see module doc)."""
    problem = encoder_decoder_problem(config)
    if problem:
        raise UnsupportedArchitecture(problem)
    model = meta_model(config, model_cls)

    roles, packed = roles_from_tp_plan(config)
    family = family_data(config.model_type) if has_family_data(config.model_type) else None
    if family is None or family.inferred:  # no data file, or one that adds to the inference ("infer": true)
        from .infer import attention_roles, infer_family

        prefix = _find_block_list(model, int(config.num_hidden_layers))
        roles.update(attention_roles(model, prefix, roles))
        if family is not None:  # the file adds roles the tp plan lacks (inference then sees them) and refusals
            roles.update(family.roles)
            packed.update(family.packed)
        inferred = infer_family(config, model, prefix, roles, packed, family.transposed if family else ())
        family = inferred if family is None else replace(
            inferred, refuse=family.refuse, roles={**inferred.roles, **family.roles},
            packed={**inferred.packed, **family.packed}, transposed=family.transposed,
            optional_roles=family.optional_roles)
    roles.update(family.roles)
    packed.update(family.packed)
    lists = _block_lists(config, model, family, stack)
    prefix, own = lists[-1] if stack is None else next(b for b in lists if b[1].name == stack)
    transposed = {
        name for name, mod in model.named_modules() if type(mod).__name__ == "Conv1D"  # GPT-2: weight is (in, out)
    } | {f"{bl}.{i}.{rel}" for bl, _ in lists for i, block in enumerate(model.get_submodule(bl)) for rel in family.transposed
         if _has_submodule(block, rel)}
    embeddings = {name for name, mod in model.named_modules() if isinstance(mod, nn.Embedding)}
    layer_res = [(re.compile(rf"^{re.escape(bl)}\.(\d+)\.(.+)$"), st) for bl, st in lists]

    params: dict[str, ParamInfo] = {}
    used_roles: set[str] = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        m, st = next(((m, st) for r, st in layer_res if (m := r.match(name))), (None, None))
        layer, rel = (int(m.group(1)), m.group(2)) if m else (None, name)
        role = ffn_field = ffn_axis = None
        parts, is_bias = 1, name.endswith(".bias")
        key = _match(rel, roles) if layer is not None else None
        if key is not None:
            used_roles.add(key)  # every stack's blocks use the family's roles
        if stack is not None and st is not None and st.name != stack:
            layer, rel, key = None, name, None  # a one-stack view: the other stack's blocks are outside its blocks
        if layer is not None:
            if key is not None:
                role = roles[key]
                group = _ffn_group_of(rel, family, st.name if st else "")
                if group is not None:
                    ffn_field = group.field
                    parts = packed.get(key, 1)
                    module_name = name.rsplit(".", 1)[0]
                    ffn_axis = _ffn_axis(role, is_bias, p.ndim, module_name in transposed)
        module_name = name.rsplit(".", 1)[0] if "." in name else ""
        input_axis = None
        if p.ndim >= 2 and module_name not in embeddings:
            input_axis = p.ndim - 2 if module_name in transposed else p.ndim - 1
        params[name] = ParamInfo(name, tuple(p.shape), layer, rel, role, ffn_field, parts, ffn_axis, is_bias, input_axis)

    missing = [k for k in family.roles if k not in used_roles and k not in family.optional_roles]
    if missing:
        raise UnsupportedArchitecture(
            f"architecture data for '{config.model_type}' names module(s) {missing} that "
            f"{type(model).__name__} does not have; fix hf_expand/architectures/data/{config.model_type}.json"
        )
    if family.ffn and not any(p.ffn_field for p in params.values()):  # "ffn": [] = no FFN at all (Mamba)
        raise UnsupportedArchitecture(
            f"no FFN tensor of '{config.model_type}' matches its architecture data "
            f"(groups {[g.prefix or list(g.modules) for g in family.ffn]}); fix hf_expand/architectures/data/{config.model_type}.json"
        )
    residual_out = tuple(sorted(k for k, r in roles.items() if r == "out"))
    tied = dict(getattr(model, "_tied_weights_keys", None) or {})
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    if not getattr(text_config, "tie_word_embeddings", True):
        tied = {}
    module_names = {id(m): n for n, m in model.named_modules()}

    def weight_of(module) -> str | None:
        if module is None or getattr(module, "weight", None) is None or id(module) not in module_names:
            return None
        return f"{module_names[id(module)]}.weight"

    in_name = weight_of(model.get_input_embeddings())
    try:
        out_name = weight_of(model.get_output_embeddings())
    except (AttributeError, NotImplementedError):
        out_name = None
    if own is not None:  # a stack's own post-norm layout (BART's decoder blocks have a cross-attention norm too)
        family = replace(family, post_norm=own.post_norm)
    count_field = own.count_field if own is not None else "num_hidden_layers"
    num_layers = len(model.get_submodule(prefix))
    return ModelLayout(config.model_type, family, prefix, num_layers, params, residual_out, tied,
                       model_cls=type(model), input_embedding=in_name, output_embedding=out_name,
                       count_field=count_field, stack=stack)


def _ffn_group_of(rel: str, family: FamilyData, stack: str = "") -> FfnGroup | None:
    """The FFN group whose prefix is the longest match for ``rel`` (``mlp.experts.`` beats ``mlp.``), among the
    groups of ``stack`` (an encoder-decoder's) and those of every stack."""
    best = None
    for g in family.ffn:
        if g.stack and g.stack != stack:
            continue
        if g.contains(rel) and (best is None or len(g.prefix) > len(best.prefix)):
            best = g
    return best


def _ffn_axis(role: str, is_bias: bool, ndim: int, transposed: bool) -> int | None:
    """Which axis of a parameter spans the FFN space.

    nn.Linear stores (out, in), so an "in" module's FFN axis is its rows (-2) and an "out" module's is its
    columns (-1); 3-D MoE experts are (experts, out, in) and follow the same rule. GPT-2's Conv1D stores
    (in, out): the axes swap. Biases of "in" modules are FFN-sized; those of "out" modules are not.
    """
    if is_bias:
        return -1 if role == "in" else None
    if ndim < 2:
        return None
    rows_axis, cols_axis = (-1, -2) if transposed else (-2, -1)
    return rows_axis if role == "in" else cols_axis


def ffn_size(config, group: FfnGroup) -> int:
    value = getattr(config, group.field, None)
    if value is None and group.default_factor_of_hidden:
        value = int(group.default_factor_of_hidden * config.hidden_size)
    if value is None:
        raise UnsupportedArchitecture(f"config of '{config.model_type}' has no value for '{group.field}'")
    return int(value)


def check_refusals(config, op: str) -> None:
    """Raise when the family's data says ``op`` cannot be applied to this config (and why)."""
    if not has_family_data(config.model_type):
        return  # an inferred layout without a data file refuses nothing up front: verification judges the result
    for r in family_data(config.model_type).refuse:
        if r.op != op:
            continue
        if r.field is None:
            raise UnsupportedArchitecture(f"{op} is not supported for {config.model_type}: {r.why}")
        if getattr(config, r.field, None) not in r.allowed:
            raise UnsupportedArchitecture(
                f"{op} is not supported for {config.model_type} with {r.field}={getattr(config, r.field, None)!r}: {r.why}"
            )
