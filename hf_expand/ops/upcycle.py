"""upcycle: a dense model becomes a mixture of experts (Sparse Upcycling), outputs unchanged.

Each chosen layer's MLP becomes ``E`` experts and a router. With ``E`` identical copies of the dense MLP the
MoE layer computes ``sum_{i in top-k} w_i * MLP(x)``, which is ``MLP(x)`` exactly when the top-k weights sum
to one. Per target family (``FAMILIES``, data):

* **mixtral**: softmax over the experts, top-k renormalised: always exact.
* **qwen3_moe**, **qwen2_moe** (route ``renormalise``): ``norm_topk_prob: true``. Qwen2-MoE always has a shared
  expert, added to the routed output: it copies the dense MLP's input projections and gets a zero output
  projection, so it adds nothing until it trains.
* **qwen2_moe**, route ``shared``: the routed experts' output projections are zero and the shared expert is
  the dense MLP with its output projection doubled, behind a gate of weight zero (sigmoid(0) = 1/2): exact
  whatever ``norm_topk_prob`` says.
* **deepseek_v3** (DeepSeek-V3-style routing, written as stock ``glm4_moe``, whose attention is Llama's:
  DeepSeek-V3's own multi-head latent attention cannot represent a Llama attention exactly): sigmoid scores,
  selection through ``e_score_correction_bias`` (zero: it selects, it never weights), top-k renormalised and
  multiplied by ``routed_scaling_factor``, so the experts' output projections are divided by it; the shared
  expert starts with a zero output projection.
* **olmoe**: refused for olmo / olmo2 / olmo3 (their norms do not fit OLMoE's blocks; see ``REFUSED``).

The router gets a small seeded normal init (std ``initializer_range``): while the experts are identical it gets
no gradient, but its random preferences send tokens to different experts, so they diverge once training starts.
``init``: ``copy`` (default, exact), ``drop:r=R`` (Drop-Upcycling: each expert re-draws a share R of its FFN
units, a different seeded subset per expert) or ``noise:std=S`` (relative noise on every expert); the last two
change the outputs on purpose: their difference is recorded, as ``depth_upscale``'s is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Union

from ..architectures import ModelLayout, meta_model
from ..errors import HfExpandError, UnsupportedArchitecture
from ..plan import EXPERT_INITS, WHOLE, Experts, Fill, Fresh, Plan, Scale, TensorStep
from . import register
from .common import updated_config

# MoE family -> how a dense model is written as it. ``experts``/``width``: the config fields of the expert count
# and the expert width; ``dense_width``: the width of the MLP of layers left dense; ``shared``: the field of the
# shared expert's width (or ``shared_count``: its width in experts); ``norm_flag``: the top-k renormalisation
# switch; ``scaling``: the routed scaling factor field; ``layers``: how a subset of MoE layers is written
# (``all``: not possible; ``mlp_only_layers``: an explicit list of dense layers; ``first_k_dense_replace``: the
# first k layers dense); ``windows``: how the family sets sliding-window attention (``layer_types``: per layer;
# ``global``: ``sliding_window`` applies to every layer; ``none``: no sliding window); ``fixed``: settings the
# exact start needs; ``rope``: entries of ``rope_parameters`` it needs.
FAMILIES = {
    "mixtral": {"model_type": "mixtral", "sources": ("llama", "mistral"), "experts": "num_local_experts",
                "width": "intermediate_size", "layers": "all", "windows": "global",
                "paper": "Sparse Upcycling (Komatsuzaki et al. 2023)"},
    "qwen2_moe": {"model_type": "qwen2_moe", "sources": ("qwen2",), "experts": "num_experts",
                  "width": "moe_intermediate_size", "dense_width": "intermediate_size",
                  "shared": "shared_expert_intermediate_size", "norm_flag": "norm_topk_prob",
                  "layers": "mlp_only_layers", "windows": "layer_types",
                  "fixed": {"qkv_bias": True, "decoder_sparse_step": 1},
                  "paper": "Qwen1.5-MoE-A2.7B upcycling"},
    "qwen3_moe": {"model_type": "qwen3_moe", "sources": ("qwen3",), "experts": "num_experts",
                  "width": "moe_intermediate_size", "dense_width": "intermediate_size", "norm_flag": "norm_topk_prob",
                  "layers": "mlp_only_layers", "windows": "global", "fixed": {"decoder_sparse_step": 1},
                  "paper": "Sparse Upcycling"},
    "deepseek_v3": {"model_type": "glm4_moe", "sources": ("llama",), "experts": "n_routed_experts",
                    "width": "moe_intermediate_size", "dense_width": "intermediate_size",
                    "shared_count": "n_shared_experts", "norm_flag": "norm_topk_prob", "scaling": "routed_scaling_factor",
                    "layers": "first_k_dense_replace", "windows": "none", "rope": {"partial_rotary_factor": 1.0},
                    "fixed": {"n_group": 1, "topk_group": 1, "use_qk_norm": False, "num_mtp_layers": 0},
                    "paper": "DeepSeek-V3 routing (aux-loss-free selection bias)"},
    "olmoe": {"model_type": "olmoe", "sources": (), "experts": "num_experts", "width": "intermediate_size",
              "layers": "all", "windows": "none", "paper": "OLMoE"},
}
DEFAULT_FAMILY = {"llama": "mixtral", "mistral": "mixtral", "qwen2": "qwen2_moe", "qwen3": "qwen3_moe",
                  "olmo": "olmoe", "olmo2": "olmoe", "olmo3": "olmoe"}
REFUSED = {  # (dense, MoE family) -> why stock transformers cannot hold the dense model as that family
    ("olmo2", "olmoe"): "OLMo 2 normalises after attention and after the MLP (post-norm, q/k norms over all heads), "
                        "OLMoE before them (pre-norm): its blocks cannot compute an OLMo 2 block",
    ("olmo3", "olmoe"): "OLMo 3 normalises after attention and after the MLP (post-norm), OLMoE before them (pre-norm)",
    ("olmo", "olmoe"): "OLMo's LayerNorm has no weights and no q/k norms, OLMoE's RMSNorms and q/k norms do not "
                       "compute it",
}
ROUTES = ("renormalise", "shared")
DEEPSEEK_SCALING = 2.5  # DeepSeek-V3's routed_scaling_factor
MAX_EXPERTS = 1024
# dense config keys the MoE config does not take over (the rest is copied: attention, norms, rope, vocabulary)
IDENTITY_KEYS = {"model_type", "architectures", "transformers_version", "_name_or_path", "auto_map", "dtype",
                 "torch_dtype", "pretraining_tp", "mlp_bias"}


def parse_init(init: str) -> tuple[str, float]:
    """``copy`` | ``drop:r=R`` (0 < R <= 1) | ``noise:std=S`` (S > 0) -> (kind, rate); one line when wrong."""
    kind, _, arg = str(init).partition(":")
    if kind not in EXPERT_INITS:
        raise HfExpandError(f"--upcycle-init must be copy, drop:r=R or noise:std=S, got {init!r}")
    if kind == "copy":
        if arg:
            raise HfExpandError(f"--upcycle-init copy takes no value, got {init!r}")
        return kind, 0.0
    key = "r" if kind == "drop" else "std"
    name, eq, value = arg.partition("=")
    try:
        rate = float(value) if eq and name == key else None
    except ValueError:
        rate = None
    if rate is None:
        raise HfExpandError(f"--upcycle-init {kind} needs {key}=NUMBER, e.g. {kind}:{key}={0.5 if kind == 'drop' else 0.01}; "
                            f"got {init!r}")
    if kind == "drop" and not 0 < rate <= 1:
        raise HfExpandError(f"--upcycle-init drop:r must be a share in (0, 1], got {rate:g}")
    if kind == "noise" and not 0 < rate <= 10:
        raise HfExpandError(f"--upcycle-init noise:std must be in (0, 10] (relative to each tensor's std), got {rate:g}")
    return kind, rate


def parse_layers(value) -> Union[str, tuple[int, ...]]:
    """``all`` | ``every-other`` | indices ``0,2,5`` / ranges ``4-7`` -> ``"all"``, ``"every-other"`` or a tuple."""
    if isinstance(value, (list, tuple)):
        items = list(value)
    elif value in ("all", "every-other"):
        return value
    else:
        items = []
        for part in str(value).split(","):
            lo, dash, hi = part.strip().partition("-")
            try:
                items += list(range(int(lo), int(hi) + 1)) if dash else [int(lo)]
            except ValueError:
                raise HfExpandError(f"--moe-layers must be all, every-other or layer indices like 1,3,5 or 4-7; "
                                    f"got {value!r}") from None
    if not items or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in items):
        raise HfExpandError(f"--moe-layers indices must be non-negative whole numbers, got {value!r}")
    return tuple(sorted(set(items)))


@register
@dataclass(frozen=True)
class Upcycle:
    """Turn every chosen MLP into ``experts`` experts with top-``top_k`` routing, as the MoE ``family`` (default:
    the family's own MoE counterpart); ``layers``: all, every-other (layers 1, 3, 5...) or indices; ``route``
    (qwen2_moe only): renormalise or shared; ``init``: copy (exact), drop:r=R, noise:std=S."""

    name: ClassVar[str] = "upcycle"
    experts: int | None = None
    top_k: int = 2
    family: str | None = None
    layers: Union[str, tuple[int, ...]] = "all"
    route: str = "renormalise"
    init: str = "copy"

    def __post_init__(self):
        e, k = self.experts, self.top_k
        if isinstance(e, bool) or not isinstance(e, int) or e < 2:
            raise HfExpandError(f"--upcycle-experts must be a whole number >= 2 (one expert is the dense MLP), got {e!r}")
        if e > MAX_EXPERTS:
            raise HfExpandError(f"--upcycle-experts {e} is above {MAX_EXPERTS}; is that a typo?")
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= e:
            raise HfExpandError(f"--top-k must be a whole number from 1 to the number of experts ({e}), got {k!r}")
        if self.family is not None and self.family not in FAMILIES:
            raise HfExpandError(f"--moe-family must be one of {', '.join(FAMILIES)}, got {self.family!r}")
        if self.route not in ROUTES:
            raise HfExpandError(f"--moe-route must be one of {', '.join(ROUTES)}, got {self.route!r}")
        object.__setattr__(self, "layers", parse_layers(self.layers))
        parse_init(self.init)

    # -- which family, which layers ---------------------------------------------------------------------------

    def target(self, config) -> tuple[str, dict]:
        dense = config.model_type
        if dense in {f["model_type"] for f in FAMILIES.values()} or any(
                getattr(config, f, None) for f in ("num_experts", "num_local_experts", "n_routed_experts")):
            raise HfExpandError(f"{dense} is a mixture of experts already; upcycle turns a dense model into one "
                                f"(more experts for an MoE: add_experts)")
        family = self.family or DEFAULT_FAMILY.get(dense)
        if family is None:
            known = ", ".join(f"{d} -> {f}" for d, f in DEFAULT_FAMILY.items())
            raise UnsupportedArchitecture(f"{dense} has no mixture-of-experts counterpart in stock transformers that "
                                          f"upcycle can write; supported: {known} (and llama -> deepseek_v3)")
        why = REFUSED.get((dense, family))
        if why:
            raise UnsupportedArchitecture(f"upcycle {dense} -> {family} is refused: {why}")
        spec = FAMILIES[family]
        if dense not in spec["sources"]:
            allowed = ", ".join(spec["sources"]) or "no dense family"
            raise UnsupportedArchitecture(f"--moe-family {family} takes {allowed}, not {dense}; "
                                          f"{dense}'s counterpart is {DEFAULT_FAMILY.get(dense, 'none')}")
        if self.route == "shared" and "shared" not in spec:
            raise HfExpandError(f"--moe-route shared needs a family with a gated shared expert (qwen2_moe), not {family}")
        if getattr(config, "mlp_bias", False):
            raise UnsupportedArchitecture(f"{dense} with mlp_bias=true cannot be written as {family} (experts have no "
                                          f"biases)")
        if getattr(config, "attention_bias", False) and family in ("mixtral", "deepseek_v3"):
            raise UnsupportedArchitecture(f"{dense} with attention_bias=true cannot be written as {family} "
                                          f"(its attention has no biases)")
        return family, spec

    def moe_layers(self, n: int, spec: dict, family: str) -> tuple[int, ...]:
        if self.layers == "all":
            chosen = tuple(range(n))
        elif self.layers == "every-other":
            chosen = tuple(range(1, n, 2))
        else:
            chosen = self.layers
            bad = [i for i in chosen if i >= n]
            if bad:
                raise HfExpandError(f"--moe-layers {bad[0]} is out of range: the model has {n} layers (0 to {n - 1})")
        if not chosen:
            raise HfExpandError(f"--moe-layers every-other chooses no layer of a {n}-layer model")
        if chosen != tuple(range(n)):
            how = spec["layers"]
            if how == "all":
                raise HfExpandError(f"{family} makes every layer MoE (its config cannot leave layers dense); use "
                                    f"--moe-layers all, or qwen2_moe / qwen3_moe for a subset")
            if how == "first_k_dense_replace" and chosen != tuple(range(chosen[0], n)):
                raise HfExpandError(f"{family} leaves only the first layers dense (first_k_dense_replace): "
                                    f"--moe-layers must be {chosen[0]}-{n - 1}, not {','.join(map(str, chosen))}")
        return chosen

    # -- the plan ---------------------------------------------------------------------------------------------

    def grown_config(self, config, spec: dict, family: str, chosen: tuple[int, ...], width: int):
        from transformers import CONFIG_MAPPING

        n = config.num_hidden_layers
        kwargs = {k: v for k, v in config.to_dict().items() if k not in IDENTITY_KEYS}
        kwargs.update(spec.get("fixed", {}))
        kwargs.update({spec["experts"]: self.experts, "num_experts_per_tok": self.top_k, spec["width"]: width})
        if "dense_width" in spec:
            kwargs[spec["dense_width"]] = width
        if "shared" in spec:
            kwargs[spec["shared"]] = width
        if "shared_count" in spec:
            kwargs[spec["shared_count"]] = 1
        if "norm_flag" in spec:
            kwargs[spec["norm_flag"]] = not (family == "qwen2_moe" and self.route == "shared")
        if "scaling" in spec:
            kwargs[spec["scaling"]] = DEEPSEEK_SCALING
        if spec["layers"] == "mlp_only_layers":
            kwargs["mlp_only_layers"] = [i for i in range(n) if i not in chosen]
        elif spec["layers"] == "first_k_dense_replace":
            kwargs["first_k_dense_replace"] = chosen[0]
        if spec.get("rope"):
            kwargs["rope_parameters"] = {**(kwargs.get("rope_parameters") or {}), **spec["rope"]}
        windows = _windows(config)
        if spec["windows"] != "layer_types":
            kwargs.pop("layer_types", None)
            kwargs["sliding_window"] = windows[0]
            if any(w != windows[0] for w in windows) or (spec["windows"] == "none" and windows[0] is not None):
                how = "has no sliding-window attention" if spec["windows"] == "none" else \
                    "applies one attention window to every layer"
                raise UnsupportedArchitecture(
                    f"{config.model_type} with sliding-window attention on {sum(w is not None for w in windows)} of "
                    f"{len(windows)} layers cannot be written as {family}: {family} {how}")
        return CONFIG_MAPPING[spec["model_type"]](**kwargs)

    def plan(self, config, layout: ModelLayout) -> Plan:
        from ..model_io import auto_class_for
        from ..grow import model_class_for

        family, spec = self.target(config)
        chosen = self.moe_layers(config.num_hidden_layers, spec, family)
        width = config.intermediate_size
        new_config = self.grown_config(config, spec, family, chosen, width)
        grown_cls = _same_head(layout.model_cls, config, new_config) or model_class_for(auto_class_for(config), new_config)
        new_config.architectures = [grown_cls.__name__]
        grown = {n: tuple(p.shape) for n, p in meta_model(new_config, grown_cls).named_parameters()}
        kind, rate = parse_init(self.init)
        E, std = self.experts, float(getattr(config, "initializer_range", 0.02) or 0.02)
        scale = DEEPSEEK_SCALING if "scaling" in spec else 1.0
        shared_route = family == "qwen2_moe" and self.route == "shared"
        steps, new_slices, modified, used = [], {}, {}, set()
        dense = {n: p.shape for n, p in layout.params.items()}
        for name, shape in grown.items():
            if name in dense and dense[name] == shape:
                steps.append(TensorStep(name, name, shape, shape))
                used.add(name)
                continue
            prefix, _, rest = name.partition(".mlp.")
            mlp = f"{prefix}.mlp."
            gate, up, down = (f"{mlp}{p}_proj.weight" for p in ("gate", "up", "down"))
            if not rest or gate not in dense or int(prefix.rsplit(".", 1)[-1]) not in chosen:
                raise UnsupportedArchitecture(f"upcycle cannot fill {name} {list(shape)} of {grown_cls.__name__} "
                                              f"from {config.model_type}; please report this")
            used.update((gate, up, down))
            I, H = dense[gate]
            init = Experts(E, unit_axis=0, parts=2, init=kind, rate=rate, scope=prefix)
            if rest == "experts.gate_up_proj":
                steps.append(TensorStep(name, gate, (2 * I, H), shape, (init,), (up,)))
                new_slices[name] = [{"axis": 0, "start": 1, "stop": E}] if kind == "copy" else [dict(WHOLE)]
            elif rest == "experts.down_proj":
                if shared_route:  # the shared expert computes the MLP; routed experts add nothing yet
                    steps.append(TensorStep(name, name, shape, shape, (Fill(0.0),)))
                    new_slices[name] = [dict(WHOLE)]
                    continue
                acts = (Experts(E, unit_axis=1, parts=1, init=kind, rate=rate, scope=prefix),)
                steps.append(TensorStep(name, down, dense[down], shape, acts + ((Scale(1 / scale),) if scale != 1 else ())))
                new_slices[name] = [{"axis": 0, "start": 1, "stop": E}] if kind == "copy" and scale == 1 else [dict(WHOLE)]
            elif rest == "gate.weight":  # the router
                steps.append(TensorStep(name, name, shape, shape, (Fresh(std),)))
                new_slices[name] = [dict(WHOLE)]
            elif rest.startswith(("shared_expert.", "shared_experts.")):
                part = rest.split(".", 1)[1]
                source = {"gate_proj.weight": gate, "up_proj.weight": up, "down_proj.weight": down}.get(part)
                if source is None or dense[source] != shape:
                    raise UnsupportedArchitecture(f"upcycle cannot fill {name} {list(shape)}; please report this")
                if part != "down_proj.weight":
                    steps.append(TensorStep(name, source, shape, shape))
                elif shared_route:  # the dense MLP behind a gate of sigmoid(0) = 1/2: doubled
                    steps.append(TensorStep(name, source, shape, shape, (Scale(2.0),)))
                    modified[name] = [dict(WHOLE)]
                else:
                    steps.append(TensorStep(name, name, shape, shape, (Fill(0.0),)))
                    new_slices[name] = [dict(WHOLE)]
            elif rest == "shared_expert_gate.weight":
                steps.append(TensorStep(name, name, shape, shape, (Fill(0.0),)))
                new_slices[name] = [dict(WHOLE)]
            else:
                raise UnsupportedArchitecture(f"upcycle cannot fill {name} {list(shape)} of {grown_cls.__name__}; "
                                              f"please report this")
        dropped = sorted(set(dense) - used - set(layout.tied))
        if dropped:
            raise UnsupportedArchitecture(f"upcycle {config.model_type} -> {family}: {grown_cls.__name__} has no place "
                                          f"for {dropped[0]} ({len(dropped)} tensors); it cannot be exact")
        every = "all layers" if len(chosen) == config.num_hidden_layers else f"layers {','.join(map(str, chosen))}"
        summary = (f"{config.model_type} -> {new_config.model_type} ({family} routing): {E} experts, top-{self.top_k}, "
                   f"{every}, init {self.init}" + (f", route {self.route}" if family == "qwen2_moe" else ""))
        notes = [f"exact when the experts are identical: {_rule(family, self.route)}"] if kind == "copy" else [
            f"init {self.init} changes the outputs on purpose (Drop-Upcycling / noise): the difference is recorded"]
        return Plan(op=self.name, params=self.to_params(), summary=summary,
                    config_updates={"model_type": new_config.model_type, spec["experts"]: E, "num_experts_per_tok": self.top_k},
                    new_config=new_config, steps=steps, new_slices=new_slices, modified=modified, notes=notes,
                    preserving=kind == "copy")

    def to_params(self) -> dict:
        return {"experts": self.experts, "top_k": self.top_k, "family": self.family,
                "layers": self.layers if isinstance(self.layers, str) else list(self.layers),
                "route": self.route, "init": self.init}


def _same_head(model_cls, config, new_config):
    """The class of ``new_config``'s family with the head ``model_cls`` has (``LlamaModel`` -> ``MixtralModel``: a
    multimodal wrapper's text model is bare; ``LlamaForCausalLM`` -> ``MixtralForCausalLM``), or None."""
    import transformers

    from ..model_io import _AUTO_CLASSES

    if model_cls is None:
        return None
    for auto_name, _ in _AUTO_CLASSES:
        mapping = getattr(getattr(transformers, auto_name), "_model_mapping", None)
        try:
            if mapping is not None and mapping[type(config)] is model_cls:
                return mapping[type(new_config)]
        except KeyError:
            continue
    return None


def _windows(config) -> list:
    """The attention window of every layer of the dense model (None: full attention)."""
    n = config.num_hidden_layers
    window = getattr(config, "sliding_window", None)
    kinds = getattr(config, "layer_types", None)
    if kinds:
        return [window if kind == "sliding_attention" else None for kind in kinds]
    if hasattr(config, "use_sliding_window") and not config.use_sliding_window:
        return [None] * n
    return [window] * n


def _rule(family: str, route: str) -> str:
    if family == "qwen2_moe" and route == "shared":
        return "routed experts output zero; the shared expert is the dense MLP, doubled behind sigmoid(0) = 1/2"
    if family == "deepseek_v3":
        return (f"top-k weights renormalised then multiplied by routed_scaling_factor {DEEPSEEK_SCALING:g}, so the "
                f"experts' output projections are divided by it; the selection bias starts at zero")
    return "the top-k weights are renormalised to sum to one"
