"""Which values train, read from the growth record: plans, masks and the masked optimizer the policies
(:mod:`.policies`: ``new`` / ``all`` / ``lora``) are built from.

Under ``new`` every pre-existing value must stay bit-identical through training, weight decay and
optimizer momentum included. A tensor that is entirely old gets ``requires_grad=False`` (no gradient, no
optimizer state). A tensor that is partly new is split into a frozen old and a trained new parameter
(:func:`split_partly_new`, :mod:`.split`): ``hf-expand train`` and ``trainer.prepare_for_trainer`` do this.
``trainer.policy_optimizer`` keeps the older masked mechanism instead:

* a tensor that is partly new gets a gradient hook that writes exact zeros at the old positions
  (``torch.where``, so even a NaN gradient cannot leak into them). With zero gradients Adam's moments stay
  exactly 0 there, so its update ``m / (sqrt(v) + eps)`` is exactly 0;
* decoupled weight decay, which would shrink every value whatever its gradient, is applied by
  :class:`MaskedAdamW` to the new positions only; it also zeroes the old positions of the gradients again
  right before each update, so gradient clipping by a NaN norm (which multiplies every entry by NaN)
  cannot reach them either.

Record names are those of the class that grew the model; a model loaded with another head (a
classifier on top of a grown ``AutoModel``) matches them with or without its ``base_model_prefix``.
"""

from __future__ import annotations

import dataclasses

import torch

from ..errors import HfExpandError
from ..record import RECORD_FILE

def slice_mask(shape: torch.Size, slices: list[dict]) -> torch.Tensor | None:
    """Boolean mask of the new entries (None when the whole tensor is new)."""
    if any(s["axis"] is None for s in slices):
        return None
    mask = torch.zeros(shape, dtype=torch.bool)
    for s in slices:
        index = [slice(None)] * len(shape)
        index[s["axis"]] = slice(s["start"], s["stop"])
        mask[tuple(index)] = True
    return mask


def _record_lookup(model, new_slices: dict) -> dict[str, list[dict]]:
    """Record entries keyed by this model's parameter names."""
    prefix = getattr(model, "base_model_prefix", "") or ""
    names = dict(model.named_parameters())
    out = {}
    for name, slices in new_slices.items():
        for candidate in (name, f"{prefix}.{name}", name.removeprefix(f"{prefix}.")):
            if candidate in names:
                out[candidate] = slices
                break
    return out


@dataclasses.dataclass
class TrainablePlan:
    """Per parameter: ``frozen`` (no grad), ``full`` (trains entirely) or ``partial`` (``masks[name]``)."""

    policy: str
    modes: dict[str, str]
    masks: dict[str, torch.Tensor]

    def summary(self) -> str:
        counts = {m: sum(1 for v in self.modes.values() if v == m) for m in ("full", "partial", "frozen")}
        return f"policy {self.policy}: {counts['full']} tensors train fully, {counts['partial']} partly (new slices), {counts['frozen']} frozen"

    def trainable_values(self, model) -> int:
        params = dict(model.named_parameters())
        return sum(params[n].numel() if m == "full" else int(self.masks[n].sum()) for n, m in self.modes.items()
                   if m != "frozen")


def plan_trainable(model, record: dict | None, policy: str, head_names: tuple[str, ...] = ()) -> TrainablePlan:
    """Decide what trains under the registered policy called ``policy`` (:mod:`.policies`). ``head_names``:
    parameters created after growth (a fresh task head) train fully."""
    from .policies import get_policy

    return get_policy(policy).plan(model, record, head_names)


def plan_from_record(model, record: dict | None, policy: str, head_names: tuple[str, ...] = (),
                     old_mode: str = "frozen") -> TrainablePlan:
    """The plan of a policy that trains what growth added: tensors the record names as new train fully or
    partly (``masks``), ``head_names`` fully, every other tensor gets ``old_mode``."""
    if record is None or "new_slices" not in record:
        raise HfExpandError(f"--trainable {policy} needs the growth record ({RECORD_FILE}) of a model grown by "
                            f"hf-expand; this model has none: use --trainable all")
    names = [n for n, _ in model.named_parameters()]
    found = _record_lookup(model, record["new_slices"])
    params = dict(model.named_parameters())
    modes, masks = {}, {}
    for name in names:
        if name in head_names:
            modes[name] = "full"
        elif name in found:
            mask = slice_mask(params[name].shape, found[name])
            modes[name] = "full" if mask is None or bool(mask.all()) else "partial"
            if modes[name] == "partial":
                masks[name] = mask
        else:
            modes[name] = old_mode
    if not any(m in ("full", "partial") for m in modes.values()):
        raise HfExpandError("the growth record names no tensor of this model as new; nothing would train "
                            "(use --trainable all)")
    return TrainablePlan(policy, modes, masks)


def mode_of(plan: TrainablePlan, name: str) -> str:
    """A parameter's mode under ``plan``; a split tensor's parts (:mod:`.split`) are frozen (old) and full (new)."""
    if ".parametrizations." in name:
        return "full" if name.endswith(".original1") else "frozen"
    return plan.modes.get(name, "frozen")


def split_partly_new(model, plan: TrainablePlan) -> None:
    """Split every partly-new tensor into a frozen old and a trained new parameter (:mod:`.split`: gradients
    and optimizer state for the new entries only; :func:`.split.join` before saving)."""
    if plan.masks:
        from .split import split

        split(model, plan.masks)


def apply_masks(model, plan: TrainablePlan) -> list:
    """Set ``requires_grad``, and install the gradient hooks on partly-new tensors that were not split (the
    ``policy_optimizer`` path); returns the hook handles."""
    handles = []
    for name, p in model.named_parameters():
        mode = mode_of(plan, name)
        p.requires_grad_(mode in ("full", "partial"))
        if mode == "partial":
            handles.append(p.register_hook(_ZeroOld(plan.masks[name])))
    return handles


class _ZeroOld:
    """Gradient hook: exact zeros at the old entries. The mask follows the gradient's device once (the model
    may move after the hooks are installed, e.g. by ``accelerator.prepare``)."""

    def __init__(self, mask: torch.Tensor):
        self.mask = mask

    def __call__(self, grad: torch.Tensor) -> torch.Tensor:
        if self.mask.device != grad.device:
            self.mask = self.mask.to(grad.device)
        return torch.where(self.mask, grad, torch.zeros_like(grad))


class MaskedAdamW(torch.optim.AdamW):
    """AdamW whose decoupled weight decay touches only the new entries of partly-new tensors.

    ``groups``: parameter groups (dicts with ``params``); ``masks`` maps parameters (the tensors
    themselves) to boolean masks of their new entries. Those
    parameters' groups run AdamW with ``weight_decay=0``; the decay is applied here, masked, first (as
    AdamW does: ``p -= lr * wd * p`` before the Adam step).
    """

    def __init__(self, groups: list[dict], masks: dict, **kwargs):
        split = []
        for group in groups:  # each group splits into its plain and its masked parameters
            plain = [p for p in group["params"] if p not in masks]
            masked = [p for p in group["params"] if p in masks]
            if plain:
                split.append({**group, "params": plain})
            if masked:
                decay = group.get("weight_decay", kwargs.get("weight_decay", 1e-2))
                split.append({**group, "params": masked, "weight_decay": 0.0, "masked_decay": decay})
        super().__init__(split, **kwargs)
        self.masks = masks

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            decay = group.get("masked_decay", 0.0)
            for p in group["params"]:
                if p.grad is None or p not in self.masks:
                    continue
                if self.masks[p].device != p.device:  # moved once, not every step
                    self.masks[p] = self.masks[p].to(p.device)
                m = self.masks[p]
                # the hook zeroed the old entries, but whatever ran since (clipping by a NaN norm multiplies
                # every entry by NaN) must not reach them: exact zeros again, right before the update
                p.grad.copy_(torch.where(m, p.grad, torch.zeros_like(p.grad)))
                if decay:
                    p.sub_(torch.where(m, p * (group["lr"] * decay), torch.zeros_like(p)))
        return super().step(closure)


def build_optimizer(model, plan: TrainablePlan, lr: float, weight_decay: float = 0.01, new_lr: float | None = None,
                    betas=(0.9, 0.999), eps: float = 1e-8, new_capacity=None) -> MaskedAdamW:
    """The optimizer for ``plan``: trainable parameters only; partly-new ones with masked decay.
    ``new_lr``: a separate learning rate for new capacity, i.e. the trained parameters whose name
    ``new_capacity(name)`` accepts (default: the plan's policy says, ``Policy.is_new_capacity``)."""
    if new_capacity is None:
        from .policies import get_policy

        new_capacity = get_policy(plan.policy).is_new_capacity
    params = dict(model.named_parameters())
    new, other = [], []
    for name, p in params.items():
        if not p.requires_grad:
            continue
        (new if new_capacity(name) else other).append(p)
    groups = []
    if other:
        groups.append({"params": other, "lr": lr, "weight_decay": weight_decay})
    if new:
        groups.append({"params": new, "lr": new_lr or lr, "weight_decay": weight_decay})
    masks = {params[n]: m for n, m in plan.masks.items() if n in params and params[n].requires_grad}  # not split
    return MaskedAdamW(groups, masks, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
