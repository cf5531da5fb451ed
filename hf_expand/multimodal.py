"""Multimodal checkpoints grow their text tower.

Gemma-3 (4B-27B), Mistral-Small-3.x, Qwen2-VL and LLaVA checkpoints are wrapper classes around a language
model hf_expand already knows. Growth runs unchanged on the text model alone (its own config and class,
``Gemma3ForCausalLM`` for ``gemma3_text``), and :class:`TextTower` lifts each plan onto the wrapper: text
tensor names move under the wrapper's language-model prefix (``model.layers.*`` -> ``model.language_model.
layers.*``), every other tensor (vision tower, projector) passes through byte-identical, and the grown text
config replaces the wrapper's nested one. The written folder keeps the wrapper class, so
``AutoModelForImageTextToText`` (or the family's class) loads it.

Refused: operations that change the hidden size (the projector writes it) and plans that change a text tensor
the wrapper does not have.
"""

from __future__ import annotations

import copy
from dataclasses import replace

from torch import nn

from .errors import UnsupportedArchitecture
from .plan import Plan, TensorStep

# the config fields of multimodal special tokens; random probe ids stay below them (text-only probes)
SPECIAL_TOKEN_FIELDS = ("image_token_id", "image_token_index", "video_token_id", "video_token_index",
                        "boi_token_index", "eoi_token_index", "vision_start_token_id", "vision_end_token_id")


def text_of(config):
    """The config that holds the language model's fields: the nested text config of a wrapper, else itself."""
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def is_wrapper(config) -> bool:
    return text_of(config) is not config


def probe_limit(config) -> int | None:
    """The lowest multimodal special token id inside the text vocabulary (probes stay below it), or None."""
    vocab = int(getattr(text_of(config), "vocab_size", 0) or 0)
    ids = [getattr(config, k, None) for k in SPECIAL_TOKEN_FIELDS]
    ids = [i for i in ids if isinstance(i, int) and not isinstance(i, bool) and 0 < i < vocab]
    return min(ids) if ids else None


def _text_field(config) -> str:
    text = text_of(config)
    for key, value in vars(config).items():
        if value is text:
            return key
    raise UnsupportedArchitecture(f"cannot tell which field of {type(config).__name__} holds its text config")


def _text_class(text_config):
    from transformers.models.auto import modeling_auto as ma

    import transformers

    # the causal LM when there is one (its lm_head is the wrapper's), else the bare text model (Qwen2-VL's)
    name = (ma.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(text_config.model_type)
            or ma.MODEL_MAPPING_NAMES.get(text_config.model_type))
    if name is None:
        raise UnsupportedArchitecture(
            f"the text model of this checkpoint ({text_config.model_type}) has no causal-LM class in transformers, "
            f"so hf-expand cannot grow it on its own; growing {text_config.model_type} wrappers is not supported yet")
    return getattr(transformers, name)


def _block_list_matching(wrapper: nn.Module, text_blocks: nn.ModuleList, num_layers: int) -> str:
    """The wrapper's ModuleList of ``num_layers`` blocks shaped like the text model's (not the vision tower's)."""
    want = [(n, tuple(p.shape)) for n, p in text_blocks[0].named_parameters()]
    for name, module in wrapper.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == num_layers and num_layers > 0:
            if [(n, tuple(p.shape)) for n, p in module[0].named_parameters()] == want:
                return name
    raise UnsupportedArchitecture(f"could not find the language model's {num_layers} blocks in {type(wrapper).__name__}")


class TextTower:
    """A wrapper checkpoint seen as its text model (see module doc)."""

    def __init__(self, config, wrapper_cls=None):
        from .architectures import _find_block_list, meta_model
        from .model_io import auto_class_for

        self.config = config
        self.field = _text_field(config)
        self.text_config = copy.deepcopy(text_of(config))
        self.text_cls = _text_class(self.text_config)
        self.text_config.architectures = [self.text_cls.__name__]
        wrapper = meta_model(config, wrapper_cls)
        self.wrapper_cls = type(wrapper)
        text = meta_model(self.text_config, self.text_cls)
        layers = int(self.text_config.num_hidden_layers)
        text_blocks = _find_block_list(text, layers)
        wrapper_blocks = _block_list_matching(wrapper, text.get_submodule(text_blocks), layers)
        # text root -> wrapper root: "model" -> "model.language_model" (the parents of the block lists)
        self.text_root = text_blocks.rsplit(".", 1)[0] if "." in text_blocks else ""
        self.wrapper_root = wrapper_blocks.rsplit(".", 1)[0] if "." in wrapper_blocks else ""
        if wrapper_blocks.rsplit(".", 1)[-1] != text_blocks.rsplit(".", 1)[-1]:
            raise UnsupportedArchitecture(f"the blocks of {type(wrapper).__name__} ({wrapper_blocks}) are named "
                                          f"unlike {self.text_cls.__name__}'s ({text_blocks})")
        self.wrapper_params = {n: tuple(p.shape) for n, p in wrapper.named_parameters(remove_duplicate=False)}
        text_params = {n: tuple(p.shape) for n, p in text.named_parameters(remove_duplicate=False)}
        self.outside: dict[str, str] = {}
        for name, shape in text_params.items():
            target = self.to_wrapper(name)
            if target is None or self.wrapper_params.get(target) != shape:
                raise UnsupportedArchitecture(f"{self.text_cls.__name__}'s {name} {list(shape)} has no counterpart in "
                                              f"{type(wrapper).__name__}; growing this wrapper is not supported yet")
        self.text_names = {self.to_wrapper(n) for n in text_params}

    def to_wrapper(self, name: str) -> str | None:
        """The wrapper's name for a text-model tensor name (``model.layers.3.x`` -> ``model.language_model.layers.3.x``)."""
        root = f"{self.text_root}." if self.text_root else ""
        if name.startswith(root):
            return f"{self.wrapper_root}.{name[len(root):]}" if self.wrapper_root else name[len(root):]
        if name in self.wrapper_params:  # lm_head: the same name in both (Gemma3, LLaVA)
            return name
        # the whole causal LM nested in the wrapper (Llama-4: "model" -> "language_model.model", so
        # "lm_head" -> "language_model.lm_head")
        if self.text_root and self.wrapper_root.endswith("." + self.text_root):
            outer = self.wrapper_root[: -len(self.text_root)]
            if outer + name in self.wrapper_params:
                return outer + name
        return None

    def wrapper_config(self, text_config):
        """The wrapper's config with ``text_config`` (grown) in place of its nested one."""
        new = copy.deepcopy(self.config)
        grown = copy.deepcopy(text_config)
        grown.architectures = None
        setattr(new, self.field, grown)
        return new

    def lift(self, plan: Plan) -> Plan:
        """``plan`` (of the text model) as a plan of the wrapper: names moved, other tensors passed through."""
        if "vocab_size" in plan.config_updates and not any("lm_head" in n.split(".") for n in self.text_names
                                                           if not n.startswith(self.wrapper_root + ".")):
            raise UnsupportedArchitecture(
                f"{plan.op} is not supported for {self.wrapper_cls.__name__}: its text model "
                f"({self.text_cls.__name__}) has no output head of its own to grow with the vocabulary")
        if any(k in plan.config_updates for k in ("hidden_size", "n_embd", "d_model")):
            raise UnsupportedArchitecture(
                f"{plan.op} is not supported for {self.wrapper_cls.__name__}: its projector writes the text model's "
                f"hidden size, which {plan.op} would change; grow the FFN, the depth, or the heads instead")

        def name(n: str) -> str:
            target = self.to_wrapper(n)
            if target is None:
                raise UnsupportedArchitecture(f"{plan.op} changes {n}, which has no place in {self.wrapper_cls.__name__}")
            return target

        steps = [TensorStep(name(s.target), name(s.source), s.shape_before, s.shape_after, s.actions,
                            tuple(name(x) for x in s.extra_sources)) for s in plan.steps]
        steps += [TensorStep(n, n, shape, shape) for n, shape in self.wrapper_params.items() if n not in self.text_names]
        prefix = f"{self.field}."
        return replace(
            plan, steps=steps,
            config_updates={prefix + k: v for k, v in plan.config_updates.items()},
            new_config=self.wrapper_config(plan.new_config),
            new_slices={name(k): v for k, v in plan.new_slices.items()},
            modified={name(k): v for k, v in plan.modified.items()},
        )

    def plans(self, operations) -> list[Plan]:
        from .grow import plan_growth

        return [self.lift(plan) for plan in plan_growth(self.text_config, operations)]
