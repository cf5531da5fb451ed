"""The language-modeling collator, seeded in any process.

transformers' ``DataCollatorForLanguageModeling(seed=...)`` refuses to draw in a process whose multiprocessing name
is not ``MainProcess`` unless it runs inside a DataLoader worker ("Worker process information is not available"),
so ``hf-expand train`` failed when run from a worker pool (joblib, Ray, ``ProcessPoolExecutor``: the growth study
runs its arms that way). Outside a DataLoader worker the seed is simply the seed."""

from __future__ import annotations

import os

from transformers import DataCollatorForLanguageModeling


class SeededLanguageModelingCollator(DataCollatorForLanguageModeling):
    def create_rng(self, return_tensors=None):
        import torch

        if torch.utils.data.get_worker_info() is None:  # this process draws, whatever its multiprocessing name
            self.generator = self.get_generator(self.seed, return_tensors)
            self._generator_pid = os.getpid()
            return
        super().create_rng(return_tensors)
