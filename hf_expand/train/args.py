"""Training arguments, declared once: :class:`TrainArgs`.

Each field carries, in its metadata, what the two other places need: ``help`` (a string, or a function
for text that depends on the policy registry), ``flag`` (``hf-expand train``'s spelling; default
``--field-name``; a name without dashes is positional; None: not a flag), ``recipe`` (the recipe key that
sets it: ``train.<field>`` by default, a path in another section where the recipe's stages feed it, None:
not a recipe key), and optionally ``choices`` (a list, or a function returning one), ``metavar``,
``group`` (flags of one group exclude each other), ``required``, and ``aliases``: other spellings of the flag,
the ``transformers.TrainingArguments`` names users know (``--learning_rate``), accepted as the same flag. :func:`add_train_flags` builds the
flags (type and default from the field itself, the default shown in the help) and :func:`recipe_schema` the
recipe's ``train:`` section from them. Nothing here imports torch: every CLI start builds the flags.
"""

from __future__ import annotations

import dataclasses
import typing

AUTO = "auto"  # metadata value: derive the flag / recipe key from the field's name


def _arg(help, default=dataclasses.MISSING, *, flag=AUTO, recipe=AUTO, choices=None, metavar=None, group=None,
         required=False, aliases=()):
    meta = {"help": help, "flag": flag, "recipe": recipe, "choices": choices, "metavar": metavar, "group": group,
            "required": required, "aliases": tuple(aliases)}
    return dataclasses.field(default=default, metadata=meta)


def _policy_names():
    from .policies import policy_names

    return list(policy_names())


def _policy_help() -> str:
    from .policies import REGISTRY

    return "what trains: " + "; ".join(f"{name}: {p.help}" for name, p in REGISTRY.items())


@dataclasses.dataclass
class TrainArgs:
    """The settings of one training run (``hf-expand train``, a recipe's train stage, or the Python API)."""

    model: str = _arg("model folder (grown by hf-expand for --trainable new/lora) or Hub id", flag="model",
                      recipe="model.id")
    data: str = _arg("csv/json/jsonl/parquet/txt file, save_to_disk folder, or Hub dataset id", required=True,
                     recipe="data.source")
    # a recipe's trained model goes to <its out>/trained
    out: str = _arg("run folder: checkpoints, then the trained model", required=True, recipe=None,
                   aliases=["--output_dir"])
    data_config: str | None = _arg("configuration (subset) of a Hub dataset --data", None, metavar="NAME",
                                   recipe="data.config")
    data_revision: str | None = _arg("branch, tag or commit of a Hub dataset --data", None, metavar="REV",
                                     recipe="data.revision")
    split: str | None = _arg("split of --data to train on (default: train, or the only split)", None, metavar="NAME",
                             recipe="data.split")
    text_column: str = _arg("text column", "text", recipe="data.text_column")
    label_column: str | None = _arg("label column (sequence classification)", None, recipe="data.label_column")
    task: str | None = _arg("default: from the model's head", None, recipe="model.task",
                            choices=["causal-lm", "masked-lm", "classification"])
    trainable: str = _arg(_policy_help, "new", choices=_policy_names)
    max_steps: int | None = _arg("optimizer steps to train (this or --epochs)", None, group="length",
                                  aliases=["--max_steps"])
    epochs: float | None = _arg("passes over the training data (this or --max-steps)", None, group="length",
                                aliases=["--num_train_epochs"])
    lr: float = _arg("learning rate", 1e-4, aliases=["--learning_rate"])
    new_lr: float | None = _arg("learning rate of new capacity (default --lr)", None)
    weight_decay: float = _arg("AdamW's decoupled weight decay (under new: of the new values only)", 0.01,
                               aliases=["--weight_decay"])
    batch_size: int = _arg("examples per step, per process", 8, aliases=["--per_device_train_batch_size"])
    grad_accum: int = _arg("batches accumulated into one optimizer step", 1, aliases=["--gradient_accumulation_steps"])
    max_grad_norm: float = _arg("clip gradients to this norm (0 = no clipping)", 1.0, aliases=["--max_grad_norm"])
    bias_update_rate: float = _arg("mixtures of experts with a selection bias (DeepSeek-V3, GLM-4.5, dots.llm1): after "
                                   "each step, move every expert's bias this much toward balanced load (aux-loss-free "
                                   "balancing; experts added below the others start receiving tokens; 0 = off)", 0.001)
    warmup_steps: int = _arg("steps of linear learning-rate warmup", 0, aliases=["--warmup_steps"])
    max_length: int = _arg("tokens per example (longer texts are cut; with --packing: the block size)", 128)
    packing: bool = _arg("causal LM: pack texts into --max-length blocks", False)
    eval_data: str | None = _arg("evaluation data (same forms as --data)", None, group="eval", recipe="data.eval")
    eval_ratio: float | None = _arg("carve this share of --data out for evaluation (by source_index if augmented)",
                                    None, group="eval", recipe="data.eval_ratio")
    eval_split: str | None = _arg("split of --eval-data to evaluate on (default: test, else validation; never train "
                                  "by accident)", None, metavar="NAME", recipe="data.eval_split")
    eval_every: int = _arg("evaluate every N steps (and always at the end; 0 = only at the end)", 0,
                            aliases=["--eval_steps"])
    save_every: int = _arg("checkpoint (accelerator.save_state) every N steps (0 = never)", 0, aliases=["--save_steps"])
    log_every: int = _arg("print the loss every N steps (0 = never)", 10, aliases=["--logging_steps"])
    seed: int = _arg("seed of data order, dropout, masked-LM masks and new LoRA weights", 0)
    report_to: str = _arg("experiment trackers (Accelerate's): tensorboard (event files in OUT/logs, pushed with the "
                          "model), wandb, trackio, mlflow, all (every one installed), or none", "none",
                          choices=["none", "tensorboard", "wandb", "trackio", "mlflow", "all"],
                          aliases=["--report_to"])
    mixed_precision: str = _arg("autocast precision of forward and backward (weights stay fp32)", "no",
                                choices=["no", "bf16", "fp16"])
    gradient_checkpointing: bool = _arg("recompute activations in backward: less memory, about a third slower "
                                        "(every policy)", False, aliases=["--gradient_checkpointing"])
    fsdp: bool = _arg("shard the model with FSDP2 across the processes of accelerate launch (see docs/fsdp.md)",
                      False)
    lora_r: int = _arg("LoRA rank (--trainable lora)", 8)
    lora_alpha: int = _arg("LoRA alpha: adapters scale by alpha / r (--trainable lora)", 16)
    save_adapter: bool = _arg("with lora: also save the adapter under OUT/adapter", False)
    command: str | None = _arg("how the run was started (recorded, not compared on --resume)", None,
                               flag=None, recipe=None)  # the CLI and the recipe runner fill it
    base_model: str | None = _arg("Hub id of the model MODEL is a local copy of, when it has no hf-expand record "
                                  "naming one: the card's base_model", None, metavar="ORG/NAME",
                                  recipe="model.base_model")

    def identity(self) -> dict:
        """What a resumed run must share with the run it resumes."""
        d = dataclasses.asdict(self)
        d.pop("out")
        d.pop("command")
        d.pop("base_model")
        d.pop("report_to")  # where logs go does not change the run
        for name in ("eval_split", "data_config", "data_revision", "split"):  # runs saved before these existed
            if d.get(name) is None:
                d.pop(name)
        for flag in ("gradient_checkpointing", "fsdp"):  # nor before these flags existed
            if not d.get(flag):
                d.pop(flag)
        return d


@dataclasses.dataclass(frozen=True)
class Setting:
    """One field of :class:`TrainArgs` as the CLI and recipes see it."""

    name: str
    type: type  # int, float, str or bool (Optional unwrapped)
    default: object  # dataclasses.MISSING when required
    help: str
    flag: str | None
    recipe: str | None
    choices: list | None
    metavar: str | None
    group: str | None
    required: bool
    aliases: tuple[str, ...] = ()


def _base_type(hint) -> type:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def settings() -> list[Setting]:
    """Every field of :class:`TrainArgs`, with its metadata resolved (flag and recipe names, choices, help)."""
    hints = typing.get_type_hints(TrainArgs)
    out = []
    for f in dataclasses.fields(TrainArgs):
        m = f.metadata
        choices = m["choices"]() if callable(m["choices"]) else m["choices"]
        out.append(Setting(
            name=f.name, type=_base_type(hints[f.name]), default=f.default,
            help=m["help"]() if callable(m["help"]) else m["help"],
            flag=f"--{f.name.replace('_', '-')}" if m["flag"] == AUTO else m["flag"],
            recipe=f"train.{f.name}" if m["recipe"] == AUTO else m["recipe"],
            choices=choices, metavar=m["metavar"], group=m["group"], required=m["required"], aliases=m["aliases"]))
    return out


def _help(s: Setting) -> str:
    text = s.help
    shown = s.type is not bool and s.default is not None and s.default is not dataclasses.MISSING
    if shown and "default" not in text:  # a flag (store_true) is off by default; None: the help says what then
        text += f" (default: {s.default})"
    return text.replace("%", "%%")  # argparse formats help with %


def add_train_flags(parser) -> None:
    """``hf-expand train``'s flags, one per :class:`TrainArgs` field with a ``flag``."""
    groups = {}
    for s in settings():
        if s.flag is None:
            continue
        target = parser
        if s.group is not None:
            if s.group not in groups:
                groups[s.group] = parser.add_mutually_exclusive_group()
            target = groups[s.group]
        kwargs = {"help": _help(s)}
        if s.type is bool:
            kwargs["action"] = "store_true"
        else:
            if s.type is not str:
                kwargs["type"] = s.type
            if s.default is not dataclasses.MISSING:
                kwargs["default"] = s.default
            if s.choices is not None:
                kwargs["choices"] = s.choices
            if s.metavar is not None:
                kwargs["metavar"] = s.metavar
        if s.flag.startswith("-") and s.required:
            kwargs["required"] = True
        target.add_argument(s.flag, *s.aliases, **kwargs)


RECIPE_TYPES = {int: int, float: (int, float), str: str, bool: bool}  # a float setting takes any number


def recipe_schema() -> dict:
    """The recipe's ``train:`` section: key -> accepted type, one per field whose recipe key is ``train.*``."""
    return {s.recipe.removeprefix("train."): RECIPE_TYPES[s.type] for s in settings()
            if s.recipe and s.recipe.startswith("train.")}


def flag_keys() -> dict[str, str]:
    """``--flag`` -> its recipe key path, for every setting that has both (how recipe errors name them)."""
    return {s.flag: s.recipe for s in settings() if s.flag and s.flag.startswith("--") and s.recipe}


def aliases() -> dict[str, str]:
    """Each TrainingArguments-style alias -> the flag it stands for (``--learning_rate`` -> ``--lr``)."""
    return {alias: s.flag for s in settings() for alias in s.aliases}
