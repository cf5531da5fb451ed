"""Command line: ``hf-expand grow``, ``verify``, ``augment``, ``setup-wordnet`` (also ``python -m hf_expand``).

User errors print one line (``hf-expand: error: ...``) and exit 2, with nothing written.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import math
import os
import sys
from pathlib import Path

from . import __version__
from .errors import HfExpandError, PreservationError

log = logging.getLogger("hf_expand")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and example epilogs as written; every option's help ends with its default, unless the help
    already names it or there is none to show (a switch is off by default; None: the help says what happens)."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if (action.option_strings and "default" not in text.lower() and default not in (None, False, [])
                and default is not argparse.SUPPRESS and not isinstance(action, argparse._VersionAction)):
            text += " (default: %(default)s)"
        return text


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):  # no abbreviations: "--tok SECRET" must not be read as --token
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):  # one line instead of usage + message
        raise HfExpandError(f"{message} (see {self.prog} --help)")


INTERNAL_ERROR = 3  # an unexpected exception (a bug): not 1 (outputs not preserved) nor 2 (bad input)

EXAMPLES = {
    "grow": """examples:
  hf-expand grow meta-llama/Llama-3.2-1B --out out/llama-pro --add-layers 4            # LLaMA Pro, interleaved
  hf-expand grow ./my-model --out out/wide --widen-ffn 1.5 --add-layers 2 --dry-run   # plan and memory, no weights
  hf-expand grow mistralai/Mistral-7B-v0.1 --out out/solar --depth-upscale 8          # SOLAR (difference recorded)
  hf-expand grow ./classifier --out out/more-labels --add-labels spam,phishing
  hf-expand grow meta-llama/Llama-3.2-1B --out out/moe --upcycle-experts 8 --top-k 2   # dense -> Mixtral, exact
  hf-expand grow Qwen/Qwen2.5-0.5B --out out/moe --upcycle-experts 4 --moe-layers every-other --moe-route shared
  hf-expand grow ./deepseek-style-moe --out out/more-experts --add-experts 8          # exact: selection bias""",
    "augment": """examples:
  hf-expand augment train.csv --out data/train-aug --text-column text --augment synonym:p=0.3 --copies 2
  hf-expand augment nyu-mll/glue --data-config sst2 --out data/sst2-aug --text-column sentence --format parquet""",
    "train": """examples:
  hf-expand train out/llama-pro --data train.jsonl --out out/trained --trainable new --max-steps 200
  hf-expand train out/llama-pro --data train.jsonl --output_dir out/trained --learning_rate 1e-4   # Trainer spellings
  hf-expand train out/llama-pro --data org/corpus --data-config en --split train --out out/trained   # a Hub dataset
  accelerate launch -m hf_expand train out/llama-pro --data train.jsonl --out out/trained --fsdp""",
    "evaluate": """examples:
  hf-expand evaluate out/trained --data test.jsonl                          # perplexity of a causal LM
  hf-expand evaluate out/classifier --data test.csv --label-column label    # accuracy and F1""",
    "push": """examples:
  hf-expand push out/trained your-name/llama-pro-trained
  hf-expand push out/trained your-name/llama-pro-trained --private --create-pr
  hf-expand push data/train-aug your-name/train-augmented      # an augmented dataset, with its card""",
    "run": """examples:
  hf-expand run                                   # the shipped quickstart recipe
  hf-expand run recipes/llama-pro.yaml --dry-run  # validate and print the plan
  hf-expand run my.yaml train.max_steps=60 --out runs/short""",
    "setup-wordnet": """examples:
  sudo apt-get install wordnet-base wordnet-sense-index && hf-expand setup-wordnet""",
    "verify": """examples:
  hf-expand verify meta-llama/Llama-3.2-1B out/llama-pro
  hf-expand verify ./base ./grown --tolerance 1e-5 --probe-text 'The capital of France is'""",
    "recipes": """examples:
  hf-expand recipes ls
  hf-expand recipes cp llama-pro my-llama-pro.yaml && hf-expand run my-llama-pro.yaml --dry-run
  hf-expand recipes schema --out recipe.schema.json   # then, atop a recipe: # yaml-language-server: $schema=recipe.schema.json""",
    "env": """examples:
  hf-expand env        # paste the output into a bug report""",
    "completion": """examples:
  source <(hf-expand completion bash)                        # this shell
  hf-expand completion bash > ~/.local/share/bash-completion/completions/hf-expand
  hf-expand completion zsh > ~/.zfunc/_hf-expand             # zsh (bashcompinit)""",
}


def _verbosity_flags(parser, default) -> None:
    """-q/-v: on the main parser (before the command) and on every command (after it). The commands' copies
    default to SUPPRESS, so a flag given before the command is not reset by the command's parser."""
    g = parser.add_mutually_exclusive_group()
    g.add_argument("-q", "--quiet", action="store_true", default=default,
                   help="only print results and errors (no logs, no progress bars)")
    g.add_argument("-v", "--verbose", action="store_true", default=default,
                   help="also print debug logs, and the traceback of an unexpected error")


def _push_flags(p, prefix: str = "") -> None:
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--revision", help="branch to push to (default main)")
    p.add_argument("--commit-message", help="commit message (default: \"Upload REPO with hf-expand\")")
    p.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing to the branch")
    p.add_argument("--token", help="Hub token (default: HF_TOKEN or the stored login); never written anywhere")
    p.add_argument("--include-dotfiles", action="store_true",
                   help="also upload dotfiles and dot-folders (left out by default; .hf_expand_local.json never goes up)")
    p.add_argument("--timeout", type=float, metavar="SECONDS",
                   help="per-request Hub timeout (default: HF_EXPAND_PUSH_TIMEOUT, else 60)")


def _recorded_command() -> str:
    """The command line as recorded in records and cards: --token values replaced by ***, local paths by
    their public names (``lineage.public_command``)."""
    from .lineage import public_command

    return public_command(sys.argv[1:])


def _number(text: str) -> float:
    """Parse any number; range and wholeness are checked by the operations, with their own messages."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def _augment_count(name: str):
    """argparse type for ``--copies`` / ``--num-proc``: a whole number within the augmentation pipeline's bound
    (``augment.pipeline.COUNT_RULES``, which recipes use too), refused before any data is read."""
    def parse(text: str) -> int:
        from .augment.pipeline import COUNT_RULES

        value = int(text)  # a ValueError: argparse's own "invalid int value" line
        problem = COUNT_RULES[name](value)
        if problem:  # the flag's own words (not argparse's "argument --copies:")
            raise HfExpandError(f"--{name.replace('_', '-')} {problem}")
        return value

    parse.__name__ = "int"
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="hf-expand", description="Grow a trained Hugging Face model with its outputs preserved.",
                     epilog="examples:\n  hf-expand grow meta-llama/Llama-3.2-1B --out out/llama-pro --add-layers 4\n"
                            "  hf-expand run              # the quickstart recipe: grow, augment, train, evaluate\n"
                            "  hf-expand COMMAND --help   # the flags of one command, with their defaults\n\n"
                            "exit codes: 0 done, 1 outputs not preserved (nothing written), 2 bad input (nothing "
                            "written), 3 unexpected error (a bug: rerun with -v and report it), 130 interrupted")
    parser.add_argument("--version", action="version", version=f"hf-expand {__version__}")
    _verbosity_flags(parser, False)
    common = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    _verbosity_flags(common, argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")
    _add_parser = sub.add_parser

    def add_parser(name, **kwargs):  # every command: the -q/-v flags and its examples
        kwargs.setdefault("parents", [common])
        if name in EXAMPLES:
            kwargs.setdefault("epilog", EXAMPLES[name])
        return _add_parser(name, **kwargs)

    sub.add_parser = add_parser

    g = sub.add_parser("grow", parents=[common], help="grow a checkpoint (folder or Hub id) into a new folder",
                       description="Grow a checkpoint with its outputs preserved. A safetensors checkpoint is "
                                   "streamed: tensors are read one at a time, each output tensor is computed in fp32 "
                                   "by the composed plan and rounded once to the checkpoint's dtype, and written into "
                                   "shards of at most --max-shard-size; unchanged tensors are copied byte for byte. "
                                   "The certificate then runs base and written folder on probe inputs one block at a "
                                   "time in stock transformers modules (per-block hidden-state max |diff|, final "
                                   "max |diff|, KL; in the growth record and the card). Memory: about one block in "
                                   "fp32, or the embeddings/head, whichever is larger, whatever the model's size "
                                   "(--dry-run prints the prediction, the disk space and the shards). Pickled .bin "
                                   "checkpoints are grown in memory.")
    g.add_argument("src", help="Hub id or local save_pretrained folder")
    g.add_argument("--out", help="output folder (must not exist unless --overwrite)")
    w = g.add_mutually_exclusive_group()
    w.add_argument("--widen-ffn", type=_number, metavar="F", help="multiply every FFN width by F (> 1)")
    w.add_argument("--ffn-size", type=_number, metavar="N", help="set the FFN width to N units (MoE: the experts' width; the shared expert and dense MLPs scale by the same ratio)")
    g.add_argument("--multiple-of", type=_number, metavar="N",
                   help="with --widen-ffn/--ffn-size: round every new FFN width up to a multiple of N (e.g. 128 for "
                        "tensor parallelism and quantised kernels)")
    g.add_argument("--add-layers", type=_number, metavar="N", help="add N identity layers")
    g.add_argument("--placement", default="interleave",
                   help="where new layers go: interleave (default, LLaMA Pro), top, bottom, or indices i,j,... in the grown model")
    g.add_argument("--stack", choices=["encoder", "decoder"],
                   help="encoder-decoders (T5, BART): --add-layers/--depth-upscale in this block stack only "
                        "(default: each stack; a recipe lists two operations to give each stack its own placement)")
    g.add_argument("--depth-upscale", metavar="M|a:b,c:d",
                   help="SOLAR depth up-scaling, NOT function-preserving (the difference is recorded): two copies of the "
                        "stack with M layers dropped at the seam (SOLAR: 8 on 32 layers -> 48), or base layer ranges a:b,c:d")
    g.add_argument("--init", default="zero", metavar="zero|split|zero:noise=S",
                   help="init of new FFN units: zero (new output columns zero, default) or split (Net2Net); "
                        "zero:noise=S starts the new FFN output columns and the new blocks' output projections as "
                        "normal noise of std S x the tensor's std instead of zero: NOT function-preserving, the "
                        "drift is measured and recorded (symmetry breaking on purpose)")
    g.add_argument("--widen-hidden", type=_number, metavar="K",
                   help="multiply the hidden size by the whole number K (heads x K, head size kept), outputs exact")
    g.add_argument("--no-hidden-noise", action="store_true",
                   help="with --widen-hidden: exact replicas without the (function-preserving) symmetry-breaking noise")
    g.add_argument("--add-heads", type=_number, metavar="N", help="add N attention heads of the same size")
    g.add_argument("--kv-heads", choices=["proportional", "fixed"],
                   help="with --add-heads: grow kv heads to keep the GQA group size (proportional, default) or keep them (fixed)")
    g.add_argument("--add-labels", metavar="A,B,...", help="append these labels to a classification head")
    g.add_argument("--add-tokens", metavar="T1,T2,...", help="add these tokens to the tokenizer and embeddings")
    g.add_argument("--add-tokens-file", metavar="FILE", help="add the tokens listed in FILE, one per line")
    g.add_argument("--pad-to-multiple-of", type=_number, metavar="N",
                   help="with --add-tokens: round the embedding rows up to a multiple of N (e.g. 64; the padding "
                        "rows hold no token, as resize_token_embeddings(pad_to_multiple_of=N) leaves them)")
    g.add_argument("--special-tokens", action="store_true",
                   help="add the tokens as special tokens (chat and tool markers): never split or normalised, and "
                        "dropped by decode(skip_special_tokens=True)")
    g.add_argument("--new-token-output", choices=["pieces", "mean"],
                   help="output rows of new tokens: mean of their pieces (default) or of all rows (keeps their probability near zero)")
    u = g.add_argument_group("mixture of experts (upcycle a dense model)")
    u.add_argument("--upcycle-experts", type=_number, metavar="E",
                   help="turn each MLP into E experts (>= 2) and a router: llama/mistral -> mixtral, qwen2 -> qwen2_moe, "
                        "qwen3 -> qwen3_moe; exact with --upcycle-init copy")
    u.add_argument("--add-experts", type=_number, metavar="N",
                   help="add N experts to every MoE layer: exact through the selection bias (DeepSeek-V3, GLM-4.5, "
                        "dots.llm1); softmax routers need --expert-mode")
    u.add_argument("--expert-mode", choices=["bias", "duplicate", "split", "append"],
                   help="with --add-experts: bias (default where the router has a selection bias; exact), duplicate "
                        "(every expert twinned, top-k doubled: exact, active compute x2), split (top-1: twins, exact), "
                        "append (NOT function-preserving: the difference is recorded)")
    u.add_argument("--top-k", type=_number, metavar="K", help="with --upcycle-experts: experts per token (default 2)")
    u.add_argument("--moe-family", choices=["mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v3"],
                   help="with --upcycle-experts: the MoE family to write (default: the model's counterpart; "
                        "deepseek_v3: DeepSeek-V3 routing (selection bias, routed scaling) as stock glm4_moe, from llama)")
    u.add_argument("--moe-layers", metavar="all|every-other|I,J,A-B",
                   help="with --upcycle-experts: which layers become MoE (default all; a subset needs qwen2_moe / "
                        "qwen3_moe, or deepseek_v3 for the last layers)")
    u.add_argument("--moe-route", choices=["renormalise", "shared"],
                   help="qwen2_moe: exact through renormalised top-k (default) or through the shared expert (the "
                        "dense MLP behind a zero gate; routed experts start at zero)")
    u.add_argument("--upcycle-init", metavar="copy|drop:r=R|noise:std=S",
                   help="experts as identical copies (copy, default, exact), Drop-Upcycling (drop:r=0.5: each expert "
                        "re-draws a share R of its units) or noise (noise:std=0.01); the last two are NOT "
                        "function-preserving: their difference is recorded")
    g.add_argument("--seed", type=int, default=0, help="seed for new weights (per tensor name)")
    g.add_argument("--tolerance", type=float, help="max allowed |base - grown| on probe inputs (default by dtype: fp32 1e-4, fp16 1e-2, bf16 5e-2)")
    g.add_argument("--probe-text", action="append", default=[], metavar="TEXT", help="extra probe text (repeatable)")
    g.add_argument("--accept-difference", action="store_true", help="write the model even if outputs moved beyond --tolerance")
    g.add_argument("--dry-run", action="store_true",
                   help="print the plan and what streaming will need (peak memory, disk space, shards); read no "
                        "weights, write nothing")
    g.add_argument("--max-shard-size", default="5GB", metavar="SIZE",
                   help="largest safetensors shard written, e.g. 5GB (default), 500MB, 2GiB; a tensor bigger than "
                        "SIZE gets a shard of its own")
    g.add_argument("--overwrite", action="store_true", help="replace an --out folder hf-expand wrote (or an empty one); any other folder is refused")
    g.add_argument("--push-to", metavar="REPO", help="push the grown model to this Hub repo when done")
    _push_flags(g)
    g.add_argument("--trust-remote-code", action="store_true", help="allow custom modelling code from the source")
    g.add_argument("--base-model", metavar="ORG/NAME",
                   help="Hub id of the model SRC is a local copy of: the card's base_model (lineage on the Hub)")

    a = sub.add_parser("augment", parents=[common], help="augment the text of a dataset (file, save_to_disk folder or Hub id)")
    _lazy_epilog(a, "augmenters (SPEC = name:key=value,...; parameters with defaults):\n", _augmenters_help,
                 "\n\n" + EXAMPLES["augment"])
    a.add_argument("data", help="csv/json/jsonl/parquet/txt file, save_to_disk folder, or Hub dataset id")
    a.add_argument("--data-config", metavar="NAME", help="configuration (subset) of a Hub dataset")
    a.add_argument("--data-revision", metavar="REV", help="branch, tag or commit of a Hub dataset (default: main)")
    a.add_argument("--out", required=True, help="output folder (must not exist unless --overwrite)")
    a.add_argument("--text-column", action="append", required=True, metavar="COL",
                   help="column to augment (repeat, or COL1,COL2, for several)")
    a.add_argument("--augment", action="append", metavar="SPEC",
                   help="augmenter spec, e.g. synonym:p=0.3 (repeat to chain; default: synonym)")
    a.add_argument("--copies", type=_augment_count("copies"), default=1,
                   help="augmented copies per row (default 1, at most 1,000)")
    a.add_argument("--seed", type=int, default=0, help="seed; the output depends only on data, specs and seed")
    a.add_argument("--num-proc", type=_augment_count("num_proc"), default=None,
                   help="worker processes for datasets.map (at most 256)")
    a.add_argument("--batch-size", type=int, default=1000, help="rows per map batch (does not change the output)")
    a.add_argument("--split", action="append", metavar="NAME",
                   help="split to augment (repeatable; default train); other splits are copied untouched")
    a.add_argument("--format", choices=["arrow", "jsonl", "parquet"], default=None,
                   help="arrow (save_to_disk; the default), or one <split>.jsonl / <split>.parquet per split "
                        "(parquet is the default with --streaming)")
    a.add_argument("--streaming", action="store_true",
                   help="read the data as an IterableDataset and write the output as it goes (jsonl or parquet), "
                        "for corpora larger than the disk cache; the rows equal a non-streaming run's")
    a.add_argument("--no-original", action="store_true", help="output only the augmented copies")
    a.add_argument("--drop-duplicates", action="store_true",
                   help="drop augmented rows identical to their original or an earlier copy (default: keep and count)")
    a.add_argument("--overwrite", action="store_true", help="replace an --out folder hf-expand wrote (or an empty one); any other folder is refused")
    a.add_argument("--trust-remote-code", action="store_true",
                   help="let augmenter models (contextual, back_translation) run the custom code their repository "
                        "names (auto_map); only for models you trust (default: such models are refused)")

    from .train.args import add_train_flags

    t = sub.add_parser("train", parents=[common], help="train a (grown) model: new capacity only, everything, or LoRA",
                       description="Train a model on Accelerate: only what growth added, everything, or LoRA (see "
                                   "--trainable). One process, or many under accelerate launch.")
    add_train_flags(t)  # one flag per TrainArgs field: names, types, defaults, choices and help declared there
    t.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpoint (also finishes an interrupted final save "
                        "or --overwrite run)")
    t.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out, once the new run has succeeded (until then it stays as it is)")
    t.add_argument("--push-to", metavar="REPO", help="push the trained model to this Hub repo when done")
    _push_flags(t)

    ev = sub.add_parser("evaluate", parents=[common], help="metrics of a model on data (accuracy/F1 or perplexity), offline")
    ev.add_argument("model", help="model folder or Hub id")
    ev.add_argument("--data", required=True,
                    help="csv/json/jsonl/parquet/txt file, save_to_disk folder, or Hub dataset id")
    ev.add_argument("--text-column", default="text", help="text column")
    ev.add_argument("--label-column", help="label column: accuracy and F1 (default: none, so perplexity or "
                                           "masked-LM loss by the model's head)")
    ev.add_argument("--split", metavar="NAME", help="split of --data to evaluate on (default: test, else validation)")
    ev.add_argument("--task", choices=["causal-lm", "masked-lm", "classification"],
                    help="what to measure (default: from the model's head)")
    ev.add_argument("--batch-size", type=int, default=16, help="examples per forward pass")
    ev.add_argument("--max-length", type=int, default=128, help="tokens per example (longer texts are cut)")
    ev.add_argument("--seed", type=int, default=0, help="seed of masked-LM masks")

    pu = sub.add_parser("push", parents=[common], help="push an output folder to the Hub with a refreshed model card")
    pu.add_argument("folder", help="a folder written by hf-expand grow/train, or an augmented dataset "
                                   "(hf-expand augment --out): pushed as a dataset repo with its card")
    pu.add_argument("repo_id", help="namespace/name")
    _push_flags(pu)

    rn = sub.add_parser("run", parents=[common], help="run a recipe: grow -> data -> augment -> train (with evaluation) -> push")
    rn.add_argument("recipe", nargs="?", help="recipe YAML file, or a shipped recipe's name (default: quickstart)")
    rn.add_argument("overrides", nargs="*", metavar="key.path=value", help="override recipe values")
    rn.add_argument("--out", help="run folder (default: the recipe's out, else runs/<recipe name>)")
    rn.add_argument("--dry-run", action="store_true", help="validate and print the plan; load no weights")

    s = sub.add_parser("setup-wordnet", parents=[common],
                       help="copy Debian's WordNet (apt-get install wordnet-base wordnet-sense-index) into NLTK's layout")
    s.add_argument("--source", default="/usr/share/wordnet", help="folder with the WordNet 3.0 database files")
    s.add_argument("--target", default=None, help="NLTK data folder (default $HF_EXPAND_NLTK_DATA or ~/.cache/hf_expand/nltk_data)")
    s.add_argument("--overwrite", action="store_true", help="replace a corpora/wordnet folder hf-expand did not write")

    v = sub.add_parser("verify", parents=[common],
                       help="compare two models (folders or Hub ids) on probe inputs, block by block (streamed)",
                       description="Run both models on the same probes one block at a time (about one block in "
                                   "memory, any size) and print the certificate: the final outputs' max |Δ|, the KL "
                                   "of the next-token distributions, and the hidden state's max |Δ| after every "
                                   "block that has a counterpart in the base (from the grown folder's growth record; "
                                   "by index when the depths agree). Exit 1 when the outputs differ beyond "
                                   "--tolerance, naming the first block that differs.")
    v.add_argument("base", help="the base model: folder or Hub id")
    v.add_argument("grown", help="the grown model: folder or Hub id")
    v.add_argument("--tolerance", type=float, default=1e-4, help="max allowed |base - grown| of the final outputs (default 1e-4)")
    v.add_argument("--probe-text", action="append", default=[], metavar="TEXT",
                   help="probe text besides the random probes (repeatable; default: random ids only)")
    v.add_argument("--seed", type=int, default=0, help="seed of the random probe ids")

    rc = sub.add_parser("recipes", help="list the shipped recipes, or copy one to edit",
                        description="The recipes shipped with hf-expand (`hf-expand run NAME` runs one as it is).")
    rcs = rc.add_subparsers(dest="recipes_command", required=True, parser_class=_Parser, metavar="ACTION")
    rcs.add_parser("ls", parents=[common], help="list the shipped recipes with their first comment line")
    cp = rcs.add_parser("cp", parents=[common], help="copy a shipped recipe to edit it")
    cp.add_argument("name", help="a shipped recipe's name (see `hf-expand recipes ls`)")
    cp.add_argument("dest", nargs="?", help="file or existing folder to copy to (default: ./NAME.yaml)")
    cp.add_argument("--overwrite", action="store_true", help="replace an existing destination file")
    sc = rcs.add_parser("schema", parents=[common], help="print the recipe schema as JSON Schema (for editors)")
    sc.add_argument("--out", metavar="FILE", help="write it to FILE instead of printing it")
    sc.add_argument("--overwrite", action="store_true", help="replace an existing FILE")

    sub.add_parser("env", help="print versions and the machine for a bug report (no token is ever printed)",
                   description="Versions of hf-expand, Python, torch (and its accelerators) and the Hugging Face "
                               "libraries, for a bug report.")
    c = sub.add_parser("completion", help="print a shell completion script (bash or zsh)",
                       description="Print a completion script for the commands and their flags.")
    c.add_argument("shell", choices=["bash", "zsh"], help="the shell to complete in")
    return parser


def _read_tokens(args) -> list[str] | None:
    from .ops.add_labels import parse_list

    tokens = None
    if args.add_tokens is not None:
        tokens = list(parse_list(args.add_tokens, "--add-tokens"))
    if args.add_tokens_file is not None:
        try:
            lines = open(args.add_tokens_file, encoding="utf-8").read().splitlines()
        except OSError as exc:
            raise HfExpandError(f"--add-tokens-file {args.add_tokens_file}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise HfExpandError(f"--add-tokens-file {args.add_tokens_file} is not UTF-8 text") from None
        from_file = [ln.strip() for ln in lines if ln.strip()]
        if not from_file:
            raise HfExpandError(f"--add-tokens-file {args.add_tokens_file} lists no tokens (one per line)")
        tokens = (tokens or []) + from_file
    return tokens


def _operations(args) -> list:
    from .ops.add_heads import AddHeads
    from .ops.add_labels import AddLabels, parse_list
    from .ops.add_layers import AddLayers
    from .ops.add_tokens import AddTokens
    from .ops.widen_ffn import WidenFFN
    from .ops.widen_hidden import WidenHidden

    ops = []
    if args.widen_hidden is not None:
        ops.append(WidenHidden(factor=args.widen_hidden, noise=not args.no_hidden_noise))
    elif args.no_hidden_noise:
        raise HfExpandError("--no-hidden-noise applies to --widen-hidden K; add it or drop the flag")
    if args.add_heads is not None:
        ops.append(AddHeads(count=args.add_heads, kv=args.kv_heads or "proportional"))
    elif args.kv_heads is not None:
        raise HfExpandError("--kv-heads applies to --add-heads N; add it or drop the flag")
    if args.widen_ffn is not None or args.ffn_size is not None:
        ops.append(WidenFFN(factor=args.widen_ffn, size=args.ffn_size, init=args.init, multiple_of=args.multiple_of))
    elif args.multiple_of is not None:
        raise HfExpandError("--multiple-of applies to --widen-ffn F / --ffn-size N; add one or drop the flag")
    placement_given = args.placement != "interleave"
    if args.add_layers is not None or placement_given:
        ops.append(AddLayers(count=_whole("--add-layers", args.add_layers), placement=args.placement, stack=args.stack,
                             init=args.init if args.init.startswith("zero:") else "zero"))
    if args.depth_upscale is not None:
        from .ops.depth_upscale import DepthUpscale

        spec = args.depth_upscale.strip()
        ops.append(DepthUpscale(trim=int(spec), stack=args.stack) if spec.isascii() and spec.isdecimal()
                   else DepthUpscale(ranges=spec, stack=args.stack))
    if args.stack and args.add_layers is None and args.depth_upscale is None:
        raise HfExpandError("--stack applies to --add-layers N or --depth-upscale M; add one or drop the flag")
    if args.add_labels is not None:
        ops.append(AddLabels(parse_list(args.add_labels, "--add-labels")))
    tokens = _read_tokens(args)
    if tokens is not None:
        ops.append(AddTokens(tuple(tokens), output_init=args.new_token_output or "pieces", special=args.special_tokens,
                             pad_to_multiple_of=args.pad_to_multiple_of))
    elif args.new_token_output is not None or args.special_tokens or args.pad_to_multiple_of is not None:
        flag = ("--new-token-output" if args.new_token_output is not None else
                "--special-tokens" if args.special_tokens else "--pad-to-multiple-of")
        raise HfExpandError(f"{flag} applies to --add-tokens / --add-tokens-file; add one or drop the flag")
    if args.init != "zero" and not any(op.name == "widen_ffn" or (op.name == "add_layers" and op.init != "zero")
                                       for op in ops):
        raise HfExpandError("--init applies to FFN widening (--widen-ffn F / --ffn-size N), and zero:noise=S also to "
                            "--add-layers N; add one or drop the flag")
    if args.add_experts is not None:
        from .ops.add_experts import AddExperts

        ops.append(AddExperts(count=_whole("--add-experts", args.add_experts), mode=args.expert_mode))
    elif args.expert_mode is not None:
        raise HfExpandError("--expert-mode applies to --add-experts N; add it or drop the flag")
    moe = {"top_k": ("--top-k", _whole("--top-k", args.top_k)), "family": ("--moe-family", args.moe_family),
           "layers": ("--moe-layers", args.moe_layers), "route": ("--moe-route", args.moe_route),
           "init": ("--upcycle-init", args.upcycle_init)}
    given = {key: value for key, (_, value) in moe.items() if value is not None}
    if args.upcycle_experts is not None:
        from .ops.upcycle import Upcycle

        if ops:
            raise HfExpandError("--upcycle-experts runs on its own: grow the dense model first, then upcycle the grown "
                                "folder")
        ops.append(Upcycle(experts=_whole("--upcycle-experts", args.upcycle_experts), **given))
    elif given:
        flag = moe[next(iter(given))][0]
        raise HfExpandError(f"{flag} applies to --upcycle-experts E; add it or drop the flag")
    if not ops:
        raise HfExpandError(
            "nothing to grow: pass one or more of --widen-ffn F, --ffn-size N, --add-layers N, --depth-upscale M, --widen-hidden K, "
            "--add-heads N, --add-labels A,B, --add-tokens T1,T2 / --add-tokens-file FILE, --add-experts N, or "
            "--upcycle-experts E"
        )
    return ops


def _whole(flag: str, value):
    """A ``_number`` flag that must be a whole number: its int (None stays None), or one line."""
    if value is None:
        return None
    if not float(value).is_integer():
        raise HfExpandError(f"{flag} must be a whole number, got {value:g}")
    return int(value)


def _check_common(args) -> None:
    """--tolerance, --seed and --probe-text of grow / verify / augment: the rules recipes use too (``checks``)."""
    from . import checks

    for flag, value, rule in (("--tolerance", getattr(args, "tolerance", None), checks.tolerance),
                              ("--seed", args.seed, checks.seed),
                              ("--probe-text", getattr(args, "probe_text", None), checks.probe_texts)):
        problem = None if value is None else rule(value)
        if problem:
            raise checks.flag_error(flag, problem)


def cmd_grow(args) -> int:
    from .grow import grow_checkpoint, plan_growth, render_plans, with_tokenizer
    from .model_io import load_config
    from .output import check_output_dir

    _check_common(args)
    ops = _operations(args)
    if args.dry_run:
        config = load_config(args.src, args.trust_remote_code)
        ops = with_tokenizer(ops, args.src, args.trust_remote_code)
        plans = plan_growth(config, ops)
        print(render_plans(config, plans))
        for line in _prediction_lines(config, plans, args):
            print(line)
        return 0
    if not args.out:
        raise HfExpandError("--out DIR is required (or use --dry-run)")
    check_output_dir(args.out, args.overwrite, args.src)
    report = grow_checkpoint(
        args.src, args.out, ops, seed=args.seed, tolerance=args.tolerance, probe_texts=args.probe_text,
        accept_difference=args.accept_difference, overwrite=args.overwrite,
        trust_remote_code=args.trust_remote_code, command=_recorded_command(),
        progress=not args.quiet, base_model=args.base_model, max_shard_size=args.max_shard_size,
    )
    for o in report.operations:
        print(f"{o.op}: {o.summary}; params {o.params_before:,} -> {o.params_after:,}; max|diff| {o.max_abs_diff:.3g}"
              + ("" if o.preserving else " (recorded, not enforced: not function-preserving)"))
        for note in o.notes:
            print(f"  note: {note}")
    against = "" if report.preserving else f" vs {report.reference}"
    print(f"wrote {args.out} (reloaded max|diff|{against} {report.reloaded_max_abs_diff:.3g}, tolerance {report.tolerance:g})")
    if args.push_to:
        _push(args, args.out)
    return 0


def _prediction_lines(config, plans, args) -> list[str]:
    """What a streamed grow of ``config`` will need (from meta models: no weights read), and whether ``--out``'s
    filesystem has the room."""
    from .grow import model_class_for
    from .model_io import auto_class_for, source_dtype
    from .shards import parse_size
    from .streamed import check_disk, meta_model, predict, render_prediction

    limit = parse_size(args.max_shard_size)
    auto = auto_class_for(config)
    dtype = source_dtype(config)
    grown_config = plans[-1].new_config if plans else config
    p = predict(meta_model(model_class_for(auto, config), config),
                meta_model(model_class_for(auto, grown_config), grown_config), plans, dtype, limit)
    lines = render_prediction(p, args.out)
    if args.out:
        try:
            check_disk(Path(args.out), p["disk"])
        except HfExpandError as exc:
            lines.append(f"warning: {exc}")
    return lines


def cmd_verify(args) -> int:
    from .certificate import render
    from .verify_stream import all_safetensors, default_probes, streamed_certificate

    _check_common(args)
    if not all_safetensors(args.base, args.grown):
        return _verify_in_memory(args)
    cert, _ = streamed_certificate(args.base, args.grown, default_probes(args.seed, args.probe_text, args.base),
                                   progress=not args.quiet)
    for line in render(cert, args.tolerance):
        print(line)
    ok = cert.max_abs_diff <= args.tolerance
    print(f"max |base - grown| = {cert.max_abs_diff:.3g} ({'within' if ok else 'ABOVE'} tolerance {args.tolerance:g})")
    if ok:
        return 0
    block = cert.first_block_over(args.tolerance)
    where = (f"block {block['block']} is the first that differs (max |Δ| {block['max_abs_diff']:.3g} after it, vs base "
             f"block {block['counterpart']})" if block else "no block's hidden state differs beyond it: the head does")
    print(f"hf-expand: error: {args.grown} does not preserve {args.base}: {where}", file=sys.stderr)
    return 1


def _verify_in_memory(args) -> int:
    """Checkpoints with pickled weights only: both models in memory."""
    from .model_io import load_model, load_probe_tokenizer
    from .verify import make_probes, max_abs_diff, outputs

    tokenizer = load_probe_tokenizer(args.base) if args.probe_text else None
    base, grown = load_model(args.base), load_model(args.grown)
    probes = make_probes(base.config, tokenizer, args.probe_text, seed=args.seed)
    try:
        diff = max_abs_diff(outputs(base, probes), outputs(grown, probes), probes)
    except ValueError as exc:
        raise HfExpandError(f"cannot compare {args.base} and {args.grown}: {exc}") from None
    ok = diff <= args.tolerance
    print(f"max |base - grown| = {diff:.3g} ({'within' if ok else 'ABOVE'} tolerance {args.tolerance:g})")
    return 0 if ok else 1


def _lazy_epilog(parser: argparse.ArgumentParser, head: str, make, tail: str = "") -> None:
    """Give ``parser`` the epilog ``head + make() + tail``, built only when its help is shown (listing the
    augmenters imports the augment package: ~0.15 s that every other command would pay building the parser)."""
    format_help = parser.format_help
    parser.epilog = None

    def lazy_format_help() -> str:
        if parser.epilog is None:
            parser.epilog = head + make() + tail
        return format_help()

    parser.format_help = lazy_format_help


def _augmenters_help() -> str:
    from .augment.registry import describe

    return describe()


def cmd_augment(args) -> int:
    import time

    from .augment import augment_dataset, resolve, summarize
    from .augment.data_io import load_data, save_data, save_stream
    from .augment.pipeline import check_augmenter_models
    from .output import atomic_output_dir, check_output_dir

    columns = [c.strip() for item in args.text_column for c in item.split(",") if c.strip()]
    if args.copies < 1:
        raise HfExpandError(f"--copies must be >= 1, got {args.copies}")
    if args.num_proc is not None and args.num_proc < 1:
        raise HfExpandError(f"--num-proc must be >= 1, got {args.num_proc}")
    if args.batch_size < 1:
        raise HfExpandError(f"--batch-size must be >= 1, got {args.batch_size}")
    fmt = args.format or ("parquet" if args.streaming else "arrow")
    if args.streaming and fmt == "arrow":
        raise HfExpandError("--streaming writes the output as it is read, as jsonl or parquet; use --format parquet "
                            "(or drop --streaming)")
    if args.streaming and args.num_proc not in (None, 1):
        raise HfExpandError("--num-proc does not apply to --streaming (the stream is read in one pass); drop it")
    _check_common(args)
    check_output_dir(args.out, args.overwrite, args.data)
    specs = resolve(args.augment or ["synonym"])  # validated before any data is read
    check_augmenter_models(specs, args.trust_remote_code)  # models naming custom code: refused up front
    if args.quiet:
        import datasets

        datasets.disable_progress_bars()
    data = load_data(args.data, args.data_config, args.data_revision, streaming=args.streaming)
    if args.split and not hasattr(data, "keys"):
        raise HfExpandError(f"{args.data} has no splits (a single dataset); drop --split")
    splits = args.split or ["train"]
    start = time.perf_counter()
    counts: dict = {}
    out = augment_dataset(data, specs, columns, copies=args.copies, seed=args.seed, num_proc=args.num_proc,
                          splits=splits, keep_original=not args.no_original,
                          duplicates="drop" if args.drop_duplicates else "keep", batch_size=args.batch_size,
                          progress=not args.quiet, trust_remote_code=args.trust_remote_code, counts=counts)
    names = ["rows"] if not hasattr(data, "keys") else list(splits)
    with atomic_output_dir(args.out, args.overwrite, args.data) as tmp:
        if args.streaming:  # the augmenting happens while writing: counted as it goes
            save_stream(out, tmp, fmt, args.batch_size, progress=not args.quiet)
            seconds = time.perf_counter() - start
            for name in names:
                if counts[name].rows_in == 0:
                    raise HfExpandError(f"the dataset{'' if name == 'rows' else f' in split {name!r}'} is empty; "
                                        f"nothing to augment")
                counts[name].seconds = seconds
            lines = [f"{name}: {counts[name]}" for name in names]
            rows = {name: counts[name].rows_out for name in names}
        else:
            seconds = time.perf_counter() - start
            pairs = [("rows", data, out)] if not hasattr(data, "keys") else [(s, data[s], out[s]) for s in splits]
            lines = [f"{name}: {summarize(before, after, columns, args.copies, seconds)}" for name, before, after in pairs]
            rows = {name: len(after) for name, _, after in pairs}
            save_data(out, tmp, fmt)
        from .lineage import public_source

        (tmp / "hf_expand_augmentation.json").write_text(json.dumps(
            {"augmenters": [str(s) for s in specs], "seed": args.seed, "copies": args.copies, "summary": lines,
             "command": _recorded_command(), "source": public_source(args.data) or args.data,
             "data_config": args.data_config, "data_revision": args.data_revision, "format": fmt,
             "streaming": args.streaming, "rows": rows}, indent=2) + "\n")
    for line in lines:
        print(line)
    print(f"augmenters: {'; '.join(str(s) for s in specs)}; seed {args.seed}")
    print(f"wrote {args.out} ({fmt}{', streamed' if args.streaming else ''})")
    return 0


def cmd_train(args) -> int:
    import dataclasses

    from .train import TrainArgs, train

    fields = {f.name for f in dataclasses.fields(TrainArgs)}
    targs = TrainArgs(**{k: v for k, v in vars(args).items() if k in fields and k != "command"},
                      command=_recorded_command())
    try:
        section = train(targs, resume=args.resume, overwrite=args.overwrite, progress=not args.quiet)
    except KeyboardInterrupt as exc:  # what the run left, and how to finish it (train says)
        print(f"hf-expand: {exc.args[0] if exc.args else 'interrupted'}", file=sys.stderr)
        return 130
    import os

    if int(os.environ.get("RANK", "0")) == 0:
        metrics = ", ".join(f"{k} {v:.4g}" for k, v in section["final_metrics"].items() if isinstance(v, float))

        def fmt(x):
            return "n/a" if x is None else f"{x:.4f}"

        print(f"trained {section['steps']} steps ({section['plan']}); loss {fmt(section['first_loss'])} -> "
              f"{fmt(section['final_loss'])}{'; ' + metrics if metrics else ''}")
        if section.get("tokens_per_second"):
            print(f"{section['tokens_per_second']:,.0f} tokens/s, {section['steps_per_second']:.3g} steps/s; training "
                  f"state (gradients + optimizer) {section['training_state_mib']:,.1f} MiB per process")
        print(f"wrote {args.out}")
        if args.push_to:
            _push(args, args.out)
    return 0


def cmd_evaluate(args) -> int:
    from .train.evaluation import evaluate_checkpoint

    metrics = evaluate_checkpoint(args.model, args.data, args.text_column, args.label_column, args.task,
                                  args.batch_size, args.max_length, args.seed, split=args.split)
    print(", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
    return 0


def _push(args, folder) -> None:
    from .hub import push_folder

    url = push_folder(folder, args.push_to if getattr(args, "push_to", None) else args.repo_id, private=args.private,
                      revision=args.revision, commit_message=args.commit_message, create_pr=args.create_pr,
                      token=args.token, include_dotfiles=args.include_dotfiles, timeout=args.timeout)
    print(f"pushed {folder}: {url}")


def cmd_push(args) -> int:
    from .dataset_push import AUGMENTATION_FILE, push_dataset

    if (Path(args.folder) / AUGMENTATION_FILE).is_file():  # an augmented dataset (hf-expand augment --out)
        print(push_dataset(args.folder, args.repo_id, private=args.private, revision=args.revision,
                           commit_message=args.commit_message, create_pr=args.create_pr, token=args.token,
                           timeout=args.timeout))
        return 0
    _push(args, args.folder)
    return 0


def cmd_run(args) -> int:
    from pathlib import Path

    from .recipe import load_recipe
    from .run import dry_run, run_recipe

    if args.recipe and "=" in args.recipe and not Path(args.recipe).is_file():  # `run a.b=1`: the default recipe
        args.recipe, args.overrides = None, [args.recipe, *args.overrides]
    recipe = load_recipe(args.recipe, args.overrides)
    if args.dry_run:
        print(dry_run(recipe))
        return 0
    out = args.out or recipe.get("out") or str(Path("runs") / Path(args.recipe or "quickstart").stem)
    result = run_recipe(recipe, out, progress=not args.quiet)
    print(f"model: {result['model']}")
    return 0


def cmd_setup_wordnet(args) -> int:
    from .augment.wordnet import install_wordnet

    root = install_wordnet(args.source, args.target, overwrite=args.overwrite)
    print(f"WordNet installed under {root} (NLTK layout); the synonym augmenter finds it there")
    return 0


def cmd_recipes(args) -> int:
    import shutil

    from .recipe import shipped_recipes

    if args.recipes_command == "schema":
        from .recipe import json_schema

        text = json.dumps(json_schema(), indent=2) + "\n"
        if args.out is None:
            print(text, end="")
            return 0
        dest = Path(args.out)
        if dest.is_dir() or (dest.exists() and not args.overwrite):
            raise HfExpandError(f"{dest} exists; choose another file or pass --overwrite to replace it"
                                if not dest.is_dir() else f"{dest} is a folder; give a file name")
        if not dest.parent.is_dir():
            raise HfExpandError(f"{dest.parent} is not a folder; create it first or choose another file")
        tmp = dest.with_name(f".{dest.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(dest)  # all or nothing
        print(f"wrote the recipe JSON Schema to {dest}")
        return 0
    shipped = shipped_recipes()
    if args.recipes_command == "ls":
        for name, path in shipped.items():
            lines = [ln.lstrip("# ").strip() for ln in path.read_text(encoding="utf-8").splitlines()[:3]
                     if ln.startswith("#") and not ln.lstrip("# ").startswith("hf-expand ")]
            print(f"{name:24s} {lines[0] if lines else ''}".rstrip())
        return 0
    name = Path(args.name).stem if args.name.endswith(".yaml") else args.name
    if name not in shipped:
        raise HfExpandError(f"no shipped recipe named {args.name!r}; shipped: {', '.join(shipped) or 'none found'}")
    dest = Path(args.dest or f"{name}.yaml")
    if dest.is_dir():
        dest = dest / f"{name}.yaml"
    if dest.exists() and not args.overwrite:
        raise HfExpandError(f"{dest} exists; choose another destination or pass --overwrite to replace it")
    if not dest.parent.is_dir():
        raise HfExpandError(f"{dest.parent} is not a folder; create it first or choose another destination")
    shutil.copyfile(shipped[name], dest)
    print(f"copied {name} to {dest}; run it with: hf-expand run {dest}")
    return 0


def cmd_env(args) -> int:
    from .env import report

    print(report())
    return 0


def cmd_completion(args) -> int:
    from .completion import script

    print(script(build_parser(), args.shell))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    verbose = any(a in ("-v", "--verbose") for a in argv)  # before parsing: a parse error may need it too
    try:
        parser = build_parser()
        if not argv:  # a bare `hf-expand`: what it can do
            parser.print_help()
            return 0
        args, extra = parser.parse_known_args(argv)
        if extra:  # `run` overrides may come after options (key.path=value); anything else is an error
            if args.command == "run" and all("=" in e and not e.startswith("-") for e in extra):
                args.overrides = [*args.overrides, *extra]
            else:
                parser.error(f"unrecognized arguments: {' '.join(extra)}")
        from .logs import setup_logging

        setup_logging(args.quiet, args.verbose)
        if args.quiet:
            import transformers

            transformers.utils.logging.disable_progress_bar()
            transformers.utils.logging.set_verbosity_error()  # no load reports for fresh heads under -q
            # datasets reads this when (if ever) it is imported; importing it here only for this costs ~0.4 s
            os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"
            if "datasets" in sys.modules:
                sys.modules["datasets"].disable_progress_bars()
        commands = {"grow": cmd_grow, "verify": cmd_verify, "augment": cmd_augment, "setup-wordnet": cmd_setup_wordnet,
                    "train": cmd_train, "evaluate": cmd_evaluate, "push": cmd_push, "run": cmd_run, "env": cmd_env,
                    "recipes": cmd_recipes,
                    "completion": cmd_completion}
        return commands[args.command](args)
    except PreservationError as exc:
        print(f"hf-expand: error: {exc}", file=sys.stderr)
        return 1
    except HfExpandError as exc:
        print(f"hf-expand: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `hf-expand ... | head`: the reader left; no traceback (128 + SIGPIPE, as shells do)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as exc:  # last resort: a disk / permission / vanished-file error no command put in its own words
        print(f"hf-expand: error: {_os_error_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hf-expand: interrupted; nothing half-written was left (finished recipe stages and training "
              "checkpoints are kept)", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - safetensors' own error is bad input; anything else is a bug
        if type(exc).__name__ == "SafetensorError" and type(exc).__module__.startswith("safetensors"):
            first = (str(exc).strip().splitlines() or ["unreadable"])[0]
            print(f"hf-expand: error: a .safetensors file is damaged or unreadable ({first}); re-download or re-save "
                  f"the model it belongs to", file=sys.stderr)
            return 2
        return _internal_error(exc, verbose)


def _internal_error(exc: BaseException, verbose: bool) -> int:
    """An exception no command expected: one line (the traceback first with ``-v``), exit code 3."""
    if verbose:
        import traceback

        traceback.print_exception(exc)
    first = (str(exc).strip().splitlines() or [""])[0]
    what = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    hint = "the traceback is above" if verbose else "rerun with -v for the traceback"
    print(f"hf-expand: internal error: {what} ({hint}; please report it with the output of `hf-expand env`)",
          file=sys.stderr)
    return INTERNAL_ERROR


_OS_ERROR_FIXES = {
    errno.ENOSPC: "free space on that disk or write somewhere else",
    errno.EDQUOT: "free space (disk quota) or write somewhere else",
    errno.EROFS: "that file system is read-only; choose a writable location",
    errno.EACCES: "check the permissions of that path or choose another location",
    errno.EPERM: "check the permissions of that path or choose another location",
    errno.EFBIG: "a file grew past the file system's or the shell's file-size limit (ulimit -f); raise the limit or "
                 "write to another file system",
    errno.ENOENT: "check that the path exists (it may have been moved or deleted while hf-expand ran)",
    errno.ENOTDIR: "a part of that path is a file, not a folder; check the path",
    errno.EISDIR: "that path is a folder where a file was expected; check the path",
    errno.EMFILE: "too many open files; raise the limit (ulimit -n)",
}


def _os_error_line(exc: OSError) -> str:
    """``<strerror>: <path>; <fix>`` for an OSError that reached ``main``."""
    what = exc.strerror or (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    paths = [os.fsdecode(p) if isinstance(p, (str, bytes, os.PathLike)) else str(p)
             for p in (exc.filename, exc.filename2) if p is not None]
    fix = _OS_ERROR_FIXES.get(exc.errno, "check the path and try again")
    return f"{what}: {' -> '.join(paths)}; {fix}" if paths else f"{what}; {fix}"


def entry() -> None:
    """The ``hf-expand`` console script (and ``python -m hf_expand``): :func:`main`, then :func:`exit_now`."""
    exit_now(main())


def exit_now(code: int) -> None:
    """Exit with ``code`` without the interpreter's teardown.

    Once torch and transformers are imported, Python's shutdown frees every module's objects one by one:
    about 1.3 s on 2 cores, longer than some whole commands. Everything a command promised is on disk by now
    (outputs are renamed into place only when complete), so the process ends the way ``os._exit`` does,
    after what a normal exit would still do: the ``atexit`` handlers (trackers, multiprocessing, the Hub
    client), logging's flush and the standard streams' flush. A process that still runs non-daemon threads
    exits the normal way, which waits for them."""
    import threading

    if any(t is not threading.main_thread() and t.is_alive() and not t.daemon for t in threading.enumerate()):
        raise SystemExit(code)
    import atexit

    atexit._run_exitfuncs()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BrokenPipeError:  # the reader left (`| head`): 128 + SIGPIPE, as main() and shells do
            code = code or 141
        except (OSError, ValueError):  # a full disk behind `> file`: the output is incomplete, so not a success
            code = code or 120  # what the interpreter itself exits with when its final flush fails
    os._exit(code)


if __name__ == "__main__":
    entry()
