"""A family's layout inferred from transformers itself, for model types with no data file.

What transformers tells about a model is enough for most decoder families: ``base_model_tp_plan`` says which
projections write a space (``colwise``) and which read it back into the residual stream (``rowwise``); the
meta-device model gives every module's shape; the config names the sizes. An FFN space is a group of
tp-plan modules under one parent (``mlp.``, ``mlp.experts.``, ``mlp.shared_expert.``) that is not attention,
and its size field is the config field whose value is the width those modules write.

Nothing here is trusted on its own: a wrong inference (a post-norm block taken for pre-norm, a fused
projection whose sections are unknown) makes growth change the outputs, and verification refuses it. What
cannot be inferred at all (no tp plan, an FFN width no config field holds) is refused with the missing
piece named.
"""

from __future__ import annotations

from torch import nn

from ..errors import UnsupportedArchitecture

_ATTENTION_WORDS = ("attn", "attention")
_FFN_FIELD_HINTS = ("intermediate", "ffn", "inner", "d_ff", "mlp")
_FINAL_NORM_NAMES = ("norm", "ln_f", "final_layernorm", "norm_f", "final_layer_norm")


def infer_family(config, model: nn.Module, blocks_prefix: str, roles: dict[str, str], packed: dict[str, int],
                 transposed: tuple[str, ...] = ()):
    """The :class:`FamilyData` of ``config.model_type`` from ``model`` (meta device) and its tp-plan ``roles``
    (``transposed``: layer-relative modules whose weights are stored (in, out), from a data file)."""
    from . import FamilyData, FfnGroup

    kind = config.model_type
    where = (f"add hf_expand/architectures/data/{kind}.json (the files beside it are examples; the module doc of "
             f"hf_expand/architectures says what each key means)")
    if not roles:
        raise UnsupportedArchitecture(
            f"no architecture data for model_type '{kind}', and none can be inferred: its config has no "
            f"base_model_tp_plan saying which projections write and read the residual stream; {where}")
    blocks = list(model.get_submodule(blocks_prefix))
    groups: dict[str, list[str]] = {}
    for rel in roles:
        parent = rel.rsplit(".", 1)[0] if "." in rel else ""
        if any(w in parent.lower() for w in _ATTENTION_WORDS) or any(w in rel.lower() for w in ("q_proj", "qkv")):
            continue
        groups.setdefault(parent, []).append(rel)
    if not groups:
        raise UnsupportedArchitecture(f"no architecture data for model_type '{kind}', and its tp plan names no "
                                      f"FFN projection (only attention); {where}")
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    ffn, fused = [], {}
    for parent, rels in sorted(groups.items(), key=lambda kv: -len(kv[0])):  # longest prefix first
        writers = [r for r in rels if roles[r] == "in"]
        # the first block that has these modules (dense and sparse layers differ in MoE families)
        width = next((w for w in (_written_width(b, writers, packed, transposed) for b in blocks) if w is not None),
                     None)
        if width is None:
            continue
        field = _size_field(text, width, parent)
        if field is None and width % 2 == 0 and _size_field(text, width // 2, parent) is not None:
            # gate and up stacked in one projection that the tp plan calls plain colwise (phi3's gate_up_proj)
            field, width = _size_field(text, width // 2, parent), width // 2
            fused.update({r: 2 for r in writers if r not in packed})
        if field is None:
            raise UnsupportedArchitecture(
                f"no architecture data for model_type '{kind}', and no config field holds the width "
                f"{width} that {parent or 'the block'}'s projections write; {where}")
        ffn.append(FfnGroup(field=field, prefix=f"{parent}." if parent else ""))  # a field may size several
    if not ffn:
        raise UnsupportedArchitecture(f"no architecture data for model_type '{kind}', and no FFN width could be "
                                      f"read off its first block; {where}")
    return FamilyData(
        model_type=kind, ffn=tuple(ffn), roles={}, packed=fused, post_norm=None, refuse=(),
        # lists of layer indices (mlp_only_layers); a list with one entry per layer (no_rope_layers) is a
        # per-layer list, which the stack operations already follow
        layer_index_fields=tuple(k for k, v in vars(text).items()
                                 if k.endswith("_layers") and isinstance(v, list) and len(v) != len(blocks)
                                 and all(isinstance(i, int) and not isinstance(i, bool) for i in v)),
        layer_threshold_fields=tuple(k for k in ("max_window_layers",) if isinstance(getattr(text, k, None), int)),
        head_norms=_final_norm(model, blocks_prefix),
        inferred=True,
    )


_ATTENTION_IN, _ATTENTION_OUT = ("q_proj", "k_proj", "v_proj"), ("o_proj",)


def attention_roles(model: nn.Module, blocks_prefix: str, roles: dict[str, str]) -> dict[str, str]:
    """Roles of the usual attention projections (``self_attn.q_proj/k_proj/v_proj`` write, ``o_proj`` reads
    back) when the tp plan lists none (MoE families whose plan names only the experts). A new block's
    ``o_proj`` must be zeroed like its FFN's down projection; without this role it would not be, and
    verification would refuse the growth."""
    if any(any(w in rel.lower() for w in _ATTENTION_WORDS) for rel in roles):
        return {}
    found = {}
    for block in model.get_submodule(blocks_prefix):
        for name, module in block.named_modules():
            parent, _, leaf = name.rpartition(".")
            if isinstance(module, nn.Linear) and any(w in parent.lower() for w in _ATTENTION_WORDS):
                if leaf in _ATTENTION_IN or leaf in _ATTENTION_OUT:
                    found[name] = "in" if leaf in _ATTENTION_IN else "out"
    return found


def _written_width(block: nn.Module, rels: list[str], packed: dict[str, int], transposed=()) -> int | None:
    """The width the "in" modules ``rels`` write: rows of a Linear weight (per packed part), or of 3-D experts."""
    for rel in rels:
        try:
            module = block.get_submodule(rel)
            weight = getattr(module, "weight", None)
        except AttributeError:
            module, weight = None, None
        if weight is None:  # 3-D MoE experts are parameters named by the rel itself (mlp.experts.gate_up_proj)
            parent, _, name = rel.rpartition(".")
            try:
                weight = getattr(block.get_submodule(parent) if parent else block, name, None)
            except AttributeError:
                weight = None
        if isinstance(weight, nn.Parameter) or getattr(weight, "ndim", 0) >= 2:
            rows = weight.shape[-2] if weight.ndim >= 2 else weight.shape[-1]
            if type(module).__name__ == "Conv1D" or rel.rpartition(".")[0] in transposed or rel in transposed:
                rows = weight.shape[-1]
            return int(rows) // packed.get(rel, 1)
    return None


def _size_field(config, width: int, parent: str = "") -> str | None:
    """The config field holding ``width`` among those that name an FFN (intermediate_size, ffn_dim, ...). When
    several do (sizes that coincide), the one sharing most words with the module path wins (``mlp.experts`` ->
    ``moe_intermediate_size``), then the plainest name."""
    fields = [k for k, v in vars(config).items()
              if isinstance(v, int) and not isinstance(v, bool) and v == width and not k.startswith("_")
              and any(h in k.lower() for h in _FFN_FIELD_HINTS)]
    words = set(parent.replace(".", "_").split("_")) | ({"moe"} if "experts" in parent else set())

    def rank(k: str):
        tokens = set(k.split("_"))
        return (-len(tokens & words), len(tokens))
    return min(fields, key=rank) if fields else None


def _final_norm(model: nn.Module, blocks_prefix: str) -> tuple[str, ...]:
    """The norm outside the blocks that feeds the head (the last one registered with a usual name)."""
    found = []
    for name, module in model.named_modules():
        if name.startswith(blocks_prefix + ".") or not name:
            continue
        if name.rsplit(".", 1)[-1] in _FINAL_NORM_NAMES and getattr(module, "weight", None) is not None:
            found.append(name)
    return tuple(found[-1:])
