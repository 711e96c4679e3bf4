"""Two-stream batches (SSL4MIS `TwoStreamBatchSampler`, PROTOCOLS.md §2.1) as a pure function of (seed, step).

Each batch is `labeled_bs` labeled indices followed by `unlabeled_bs` unlabeled ones. Labeled indices come
from one fresh permutation per epoch (epoch = floor(#labeled / labeled_bs) batches, the remainder dropped, as
in SSL4MIS); unlabeled indices from an endless stream of permutations. Because every batch is computed from
(seed, step) alone, a resumed run sees exactly the batches it would have seen without the interruption.
"""
from __future__ import annotations

import numpy as np


class TwoStreamSchedule:
    """Labeled indices are 0..num_labeled-1, unlabeled ones num_labeled..num_labeled+num_unlabeled-1."""

    def __init__(self, num_labeled: int, num_unlabeled: int, labeled_bs: int, unlabeled_bs: int, seed: int) -> None:
        if num_labeled < 1:
            raise ValueError("need at least one labeled sample")
        if unlabeled_bs > 0 and num_unlabeled < 1:
            raise ValueError("unlabeled_bs > 0 but there are no unlabeled samples")
        self.num_labeled, self.num_unlabeled = num_labeled, num_unlabeled
        self.labeled_bs, self.unlabeled_bs, self.seed = labeled_bs, unlabeled_bs, seed
        self.batches_per_epoch = max(num_labeled // labeled_bs, 1)
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
        perm = self._permutation(0, epoch, self.num_labeled, self.labeled_bs)
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
