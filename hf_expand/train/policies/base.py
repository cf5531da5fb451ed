"""What a training policy says: what trains, how the optimizer is built, what happens at save time.

The training loop (``train/loop.py``) and the Trainer helpers (``train/trainer.py``) call only these hooks,
in this order::

    plan = policy.plan(model, record, head_names)          # what trains, per parameter
    model, plan = policy.prepare(model, plan, args)         # split partly-new tensors, wrap, requires_grad
    optimizer = policy.build_optimizer(model, plan, lr, weight_decay, new_lr)
    ...                                                     # training
    model = policy.shape_like_trained(fresh, plan, args)    # sharded runs: a fresh model to load the gathered
                                                            # state dict into
    model, extra = policy.finalize_for_save(model, folder, probe, args)  # plain parameters again, merged

The defaults here are those of ``new``: entirely-old tensors frozen, partly-new ones split into a frozen old
and a trained new part (:mod:`..split`), everything that trains counted as new capacity (``--new-lr``).
Heavy imports (torch, peft) stay inside the hooks: listing the policies (``--trainable``'s choices) must
not load torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from ..policy import TrainablePlan


class Policy:
    """Base class of the training policies; subclass it, set :attr:`name` and :attr:`help`, override the hooks
    that differ, and decorate the class with :func:`.registry.register_policy`."""

    name: str = ""
    help: str = ""  # one phrase for --trainable's help
    old_mode: str = "frozen"  # the plan's mode for tensors the growth record does not name as new
    merge_probe: bool = False  # finalize_for_save gets a probe batch (a few training rows) to check a merge

    def plan(self, model, record: dict | None, head_names: tuple[str, ...] = ()) -> TrainablePlan:
        """Per parameter: ``full``, ``partial`` (with its mask of new entries) or :attr:`old_mode`, read from the
        growth record's ``new_slices``; ``head_names`` (a head created for training) train fully. Refuses a
        model without a record, and a record that names nothing of this model."""
        from ..policy import plan_from_record

        return plan_from_record(model, record, self.name, head_names, self.old_mode)

    def prepare(self, model, plan: TrainablePlan, args) -> tuple:
        """Make ``model`` train what ``plan`` says, before the optimizer and before sharding: partly-new tensors
        split into frozen old and trained new parameters, ``requires_grad`` set. Returns (model, plan in the
        returned model's parameter names). ``args``: the run's ``TrainArgs`` (None from the Trainer helper)."""
        from ..policy import apply_masks, split_partly_new

        split_partly_new(model, plan)
        apply_masks(model, plan)
        return model, plan

    def prepare_for_trainer(self, model, record: dict | None, head_names: tuple[str, ...] = ()) -> TrainablePlan:
        """:meth:`plan` + :meth:`prepare` for an optimizer ``transformers.Trainer`` builds itself."""
        plan = self.plan(model, record, head_names)
        self.prepare(model, plan, None)
        return plan

    def is_new_capacity(self, name: str) -> bool:
        """Whether the trained parameter ``name`` is new capacity (learning rate ``--new-lr``) rather than a
        pre-existing value (``--lr``)."""
        return True

    def build_optimizer(self, model, plan: TrainablePlan, lr: float, weight_decay: float = 0.01,
                        new_lr: float | None = None):
        """AdamW over the trainable parameters (:func:`..policy.build_optimizer`: partly-new tensors that were not
        split get masked decay), new capacity at ``new_lr``."""
        from ..policy import build_optimizer

        return build_optimizer(model, plan, lr, weight_decay, new_lr, new_capacity=self.is_new_capacity)

    def shape_like_trained(self, model, plan: TrainablePlan, args):
        """A sharded run's save: ``model`` is loaded fresh from the grown folder; return it shaped like the trained
        model (its parameter names), so the gathered full state dict loads into it."""
        return model

    def finalize_for_save(self, model, folder, probe: dict | None, args) -> tuple:
        """The trained model as it is saved: split tensors joined into plain parameters (a plain
        ``save_pretrained`` folder). ``folder``: where the model is being written (side files may go there);
        ``probe``: a batch when :attr:`merge_probe`. Returns (model, entries for the record's ``training``
        section)."""
        from ..split import join

        join(model)
        return model, {}
