"""Aux-loss-free load balancing of selection-bias routers (DeepSeek-V3 section 2.1.2), and the experts' load.

Routers of the DeepSeek-V3 family choose the top-k experts by ``sigmoid(score) + e_score_correction_bias`` and
weight them without the bias. After every optimizer step each bias moves by ``rate`` toward balance:
``b_i += rate * sign(mean load - load_i)``, the loads counted from the routers' choices during the step's training
forwards (summed over processes). Experts ``add_experts`` appended below every old bias start receiving tokens once
their bias has risen far enough; the record keeps each router's load over training (``expert_load``).
"""

from __future__ import annotations

import torch

from ..ops.add_experts import BIAS


class SelectionBias:
    """Counts each selection-bias router's top-k choices in training mode, and applies the balancing rule."""

    def __init__(self, model, rate: float):
        self.rate = rate
        self.routers = {name: m for name, m in model.named_modules() if isinstance(getattr(m, BIAS, None), torch.Tensor)}
        self.counts = {name: torch.zeros(getattr(m, BIAS).numel(), dtype=torch.long) for name, m in self.routers.items()}
        self.history: list = []
        self._handles = [m.register_forward_hook(self._hook(name)) for name, m in self.routers.items()]

    def __bool__(self) -> bool:
        return bool(self.routers)

    def _hook(self, name: str):
        def count(module, args, output):
            if module.training and isinstance(output, tuple) and len(output) >= 3:
                chosen = output[2].detach().flatten().to("cpu", torch.long)
                self.counts[name] += torch.bincount(chosen, minlength=self.counts[name].numel())
        return count

    def step(self, accelerator, step: int, record: bool) -> None:
        """After an optimizer step: the loads of all processes, each bias moved toward balance, counts reset."""
        loads = {}
        for name, router in self.routers.items():
            load = accelerator.reduce(self.counts[name].to(accelerator.device), reduction="sum").to("cpu")
            bias = getattr(router, BIAS)
            if self.rate:
                with torch.no_grad():
                    bias += (self.rate * torch.sign(load.float().mean() - load.float())).to(bias.device, bias.dtype)
            loads[name] = load.tolist()
            self.counts[name].zero_()
        if record:
            self.history.append([step, loads])

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()

    def record(self) -> dict:
        return {"bias_update_rate": self.rate, "history": self.history}
