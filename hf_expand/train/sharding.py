"""FSDP2 for training (``--fsdp``): every transformer block, then the whole model, sharded with torch's
``fully_shard`` across the processes of ``accelerate launch``.

The policies work on the sharded model unchanged, because they act before sharding: under ``new`` a
partly-new tensor is already two parameters (:mod:`.split`, old frozen, new trained), and FSDP2 shards
each like any other parameter; each rank's optimizer holds the state of its shards of the trained ones.
Saving gathers the full state dict (plain parameter names, :mod:`.split`'s hooks) and rank 0 writes it
once into a model loaded fresh from the grown folder.

Where it runs: accelerate enables its own FSDP only on GPUs. With ``--fsdp`` hf-expand shards the model
itself on the process group accelerate set up (gloo on CPU, NCCL on GPUs), so the CPU test and a GPU run
execute the same code; the model is then not handed to ``accelerator.prepare`` (which would wrap it in DDP).
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import HfExpandError


def block_list(model: nn.Module) -> nn.ModuleList:
    """The model's transformer blocks (the same list growth describes)."""
    from ..architectures import _find_block_list
    from ..multimodal import text_of

    config = getattr(model, "config", None)
    layers = int(text_of(config).num_hidden_layers) if config is not None else 0
    return model.get_submodule(_find_block_list(model, layers))


def shard(model: nn.Module) -> int:
    """``fully_shard`` every block, then the root (embeddings, head and anything outside the blocks, tied
    weights together). Returns the number of blocks sharded."""
    from torch.distributed.fsdp import fully_shard

    blocks = block_list(model)
    for block in blocks:
        fully_shard(block)
    fully_shard(model)
    return len(blocks)


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's state dict with plain names, gathered from the shards onto every rank (collective:
    every rank calls it; each checksums it, rank 0 saves it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))


def local(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's full value (collective), any other tensor as it is."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def check_supported(num_processes: int) -> None:
    if num_processes < 2:
        raise HfExpandError("--fsdp shards the model across processes, and this run has one; start it with "
                            "accelerate launch --num_processes N (see docs/fsdp.md), or drop --fsdp")


class ShardedState:
    """Model, optimizer and scheduler of a sharded run, checkpointed by every rank with
    ``torch.distributed.checkpoint`` (each rank writes and reads its own shards; split tensors by their parts'
    own names, :func:`.split.raw_state_dict`). The scheduler is the same on every rank: rank 0 writes it."""

    FOLDER, SCHEDULER = "fsdp", "fsdp_scheduler.pt"

    def __init__(self, model, optimizer, scheduler):
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler

    def save(self, folder) -> None:
        import torch.distributed as dist
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        from .split import raw_state_dict

        with raw_state_dict(self.model):
            model_state, optim_state = get_state_dict(self.model, self.optimizer)
            dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(folder / self.FOLDER))
        if dist.get_rank() == 0:
            torch.save(self.scheduler.state_dict(), folder / self.SCHEDULER)

    def load(self, folder) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        from .split import raw_state_dict

        if not (folder / self.FOLDER).is_dir():
            raise HfExpandError(f"{folder} was not saved by a --fsdp run (no {self.FOLDER}/ inside); resume it without "
                                f"--fsdp, or start again with --overwrite")
        with raw_state_dict(self.model):
            model_state, optim_state = get_state_dict(self.model, self.optimizer)
            state = {"model": model_state, "optim": optim_state}
            dcp.load(state, checkpoint_id=str(folder / self.FOLDER))
            set_state_dict(self.model, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
        self.scheduler.load_state_dict(torch.load(folder / self.SCHEDULER, weights_only=True))
