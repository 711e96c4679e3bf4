"""Batches for the Trainer: `StepBatches[step]` is the augmented, resized batch of that step."""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from benchmark.data.augment import AUGMENTATIONS
from benchmark.data.sampling import TwoStreamSchedule


class StepBatches(Dataset):
    """Index = training step; returns {'image': (B, C, *patch) float32, 'label': (B, *patch) int64}.

    Each sample goes through the augmentation rule's sampler, which makes the patch (resize for the SSL4MIS
    2D rules, random crop for LA) with its own generator seeded by (seed, step, slot): a batch is a pure
    function of (seed, step). The first `schedule.labeled_bs` rows are labeled; the labels of the rest are
    returned too (the data has them) but methods never see them: the Trainer passes unlabeled images only.
    """

    def __init__(self, images: list[np.ndarray], labels: list[np.ndarray], schedule: TwoStreamSchedule,
                 augmentation: str, patch: tuple[int, ...], seed: int) -> None:
        self.images, self.labels, self.schedule = images, labels, schedule
        self.rule = AUGMENTATIONS.get(augmentation)
        self.patch = tuple(patch)
        self.channels = int(images[0].shape[0])
        self.seed = seed

    def __len__(self) -> int:  # steps are unbounded; the sampler decides which ones are drawn
        return 2**62

    def __getitem__(self, step: int) -> dict[str, torch.Tensor]:
        idx = self.schedule.batch(step)
        images = np.empty((len(idx), self.channels, *self.patch), dtype=np.float32)
        labels = np.empty((len(idx), *self.patch), dtype=np.int64)
        for slot, i in enumerate(idx):
            rng = np.random.default_rng([self.seed, 2, step, slot])
            images[slot], labels[slot] = self.rule.sample(self.images[i], self.labels[i], rng, self.patch)
        return {"image": torch.from_numpy(images), "label": torch.from_numpy(labels)}


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


def step_loader(batches: StepBatches, start: int, stop: int, num_workers: int, pin_memory: bool) -> DataLoader:
    """A DataLoader over steps start..stop-1 (one batch per step, prepared in `num_workers` processes)."""
    # Own generator: creating the iterator draws a base seed, which must not shift the global torch RNG
    # (the Trainer restores that RNG on resume; batches themselves are seeded by (seed, step)).
    return DataLoader(batches, batch_size=None, sampler=range(start, stop), num_workers=num_workers,
                      pin_memory=pin_memory, generator=torch.Generator().manual_seed(batches.seed), worker_init_fn=_worker_init if num_workers else None,
                      prefetch_factor=4 if num_workers else None, persistent_workers=False)
