"""Deterministic class-stratified train/validation split of a training set."""

from __future__ import annotations

import numpy as np

from runtime.errors import DataError


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic class-stratified (train, val) index split of a training set.

    Each class keeps round(val_fraction * n) items for validation (at least one when it has two or more),
    drawn with a generator seeded by (seed, class), so adding a class never reshuffles the others.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction {val_fraction} must be in [0, 1)")
    labels = np.asarray(labels)
    train_idx: list[np.ndarray] = []
    val_idx: list[np.ndarray] = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        perm = np.random.default_rng([seed, int(cls)]).permutation(members)
        n_val = int(round(val_fraction * len(members)))
        if val_fraction > 0 and len(members) >= 2:
            n_val = min(max(n_val, 1), len(members) - 1)
        val_idx.append(perm[:n_val])
        train_idx.append(perm[n_val:])
    return np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(val_idx))
