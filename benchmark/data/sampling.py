"""Two-stream batches (SSL4MIS `TwoStreamBatchSampler`, PROTOCOLS.md §2.1) as a pure function of (seed, step).

Each batch is `labeled_bs` labeled indices followed by `unlabeled_bs` unlabeled ones. Labeled indices come
from one fresh permutation per epoch; unlabeled indices from an endless stream of permutations. Because every
batch is computed from (seed, step) alone, a resumed run sees exactly the batches it would have seen without
the interruption.

The end of a labeled epoch:
- default: floor(#labeled / labeled_bs) batches, the remainder dropped. This is SSL4MIS's semi-supervised
  sampler (HiLab-git/SSL4MIS@06df604 `code/dataloaders/dataset.py` L223-235 with `grouper` L250-254, which
  zips full groups only; `__len__` = #labeled // labeled_bs). Fewer labeled samples than `labeled_bs`: the permutation is tiled, so
  a batch always has `labeled_bs` rows (SSL4MIS asserts #labeled >= labeled_bs instead).
- `keep_last_partial=True` (labeled-only batches, `unlabeled_bs` 0): ceil(#labeled / labeled_bs) batches, the
  last one holding the #labeled mod labeled_bs remaining samples. This is SSL4MIS's FULLY SUPERVISED script,
  whose `DataLoader(db_train, batch_size, shuffle=True)` keeps the default drop_last=False
  (`code/train_fully_supervised_2D.py` L84-85): 68 slices at batch 24 give 24, 24, 20 per epoch. The Trainer
  uses the default for every method (the supervised baseline included), so the harness's supervised baseline
  drops those 20 slices of each epoch's permutation where that script trains on them.
"""
from __future__ import annotations

import numpy as np


class TwoStreamSchedule:
    """Labeled indices are 0..num_labeled-1, unlabeled ones num_labeled..num_labeled+num_unlabeled-1."""

    def __init__(self, num_labeled: int, num_unlabeled: int, labeled_bs: int, unlabeled_bs: int, seed: int,
                 keep_last_partial: bool = False) -> None:
        if num_labeled < 1:
            raise ValueError("need at least one labeled sample")
        if unlabeled_bs > 0 and num_unlabeled < 1:
            raise ValueError("unlabeled_bs > 0 but there are no unlabeled samples")
        if keep_last_partial and unlabeled_bs > 0:
            raise ValueError("keep_last_partial is for labeled-only batches (SSL4MIS's fully supervised DataLoader); "
                             "its two-stream sampler drops the remainder")
        self.num_labeled, self.num_unlabeled = num_labeled, num_unlabeled
        self.labeled_bs, self.unlabeled_bs, self.seed = labeled_bs, unlabeled_bs, seed
        self.keep_last_partial = keep_last_partial
        self.batches_per_epoch = (-(-num_labeled // labeled_bs) if keep_last_partial
                                  else max(num_labeled // labeled_bs, 1))
        self._perms: dict[tuple[int, int], np.ndarray] = {}

    def _permutation(self, stream: int, epoch: int, n: int, min_len: int) -> np.ndarray:
        key = (stream, epoch)
        if key not in self._perms:
            if len(self._perms) > 8:
                self._perms.clear()
            rng = np.random.default_rng([self.seed, stream, epoch])
            parts = [rng.permutation(n) for _ in range(-(-min_len // n))]  # tile when n < batch size
            self._perms[key] = np.concatenate(parts)
        return self._perms[key]

    def labeled(self, step: int) -> np.ndarray:
        epoch, k = divmod(step, self.batches_per_epoch)
        min_len = self.num_labeled if self.keep_last_partial else self.labeled_bs   # partial: never tiled
        perm = self._permutation(0, epoch, self.num_labeled, min_len)
        return perm[k * self.labeled_bs:(k + 1) * self.labeled_bs]

    def unlabeled(self, step: int) -> np.ndarray:
        positions = np.arange(step * self.unlabeled_bs, (step + 1) * self.unlabeled_bs)
        out = np.empty(self.unlabeled_bs, dtype=np.int64)
        for i, p in enumerate(positions):
            epoch, offset = divmod(int(p), self.num_unlabeled)
            out[i] = self._permutation(1, epoch, self.num_unlabeled, 1)[offset]
        return self.num_labeled + out

    def batch(self, step: int) -> np.ndarray:
        """The indices of batch `step`: labeled first, then unlabeled."""
        if self.unlabeled_bs == 0:
            return self.labeled(step)
        return np.concatenate([self.labeled(step), self.unlabeled(step)])
