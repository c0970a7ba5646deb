"""Train / validation / test splits by ratio and seed, stratified when rows carry labels.

One shuffle decides everything, so the same seed and ratios give the same split on any machine;
the Train step trains on ``train``, watches ``validation``, and never sees ``test`` (the Evaluate
step scores it). Stratified: each label is split at the same ratios, so a rare label still lands
in every part when it has rows enough. ``kfold_rows`` cuts the rows into k folds for
cross-validation (scikit-learn's KFold / StratifiedKFold): each row is tested exactly once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from core.errors import QuantTuneError


@dataclass(frozen=True)
class Split:
    train: list[int]
    validation: list[int]
    test: list[int]

    def to_dict(self) -> dict[str, list[int]]:
        return {"train": self.train, "validation": self.validation, "test": self.test}


def shuffled(n: int, seed: int, salt: int = 0) -> list[int]:
    import torch

    generator = torch.Generator().manual_seed(seed * 1000 + salt)
    return torch.randperm(n, generator=generator).tolist()


def _cut(rows: list[int], validation_ratio: float, test_ratio: float) -> tuple[list, list, list]:
    n = len(rows)
    n_test = _share(n, test_ratio)
    n_val = _share(n - n_test, validation_ratio / max(1e-9, 1.0 - test_ratio)) if validation_ratio else 0
    return rows[n_test + n_val :], rows[n_test : n_test + n_val], rows[:n_test]


def _share(n: int, ratio: float) -> int:
    """round(n × ratio), but at least one row for a non-zero ratio while one row remains to train on."""
    if ratio <= 0 or n < 2:
        return 0
    return min(n - 1, max(1, round(n * ratio)))


def split_rows(
    n: int,
    seed: int = 0,
    validation_ratio: float = 0.1,
    test_ratio: float = 0.0,
    labels: Sequence[object] | None = None,
) -> Split:
    """Row indices of each part; ``labels`` (one per row) stratifies the split."""
    order = shuffled(n, seed)
    if labels is None:
        train, val, test = _cut(order, validation_ratio, test_ratio)
        return Split(train, val, test)
    by_label: dict[object, list[int]] = {}
    for i in order:
        by_label.setdefault(labels[i], []).append(i)
    train, val, test = [], [], []
    for label in sorted(by_label, key=str):
        t, v, s = _cut(by_label[label], validation_ratio, test_ratio)
        train += t
        val += v
        test += s
    position = {row: k for k, row in enumerate(order)}  # keep the shuffled order within each part
    return Split(*(sorted(part, key=position.__getitem__) for part in (train, val, test)))


def kfold_rows(
    n: int, k: int, seed: int = 0, labels: Sequence[object] | None = None
) -> list[tuple[list[int], list[int]]]:
    """(train rows, test rows) of each of ``k`` folds over ``n`` rows, shuffled by ``seed``; with
    ``labels`` (one per row) every fold holds each label in about its share of the whole."""
    if k < 2:
        raise QuantTuneError(
            f"Cross-validation needs at least 2 folds ({k} asked).", "Choose 2 folds or more (5 is usual)."
        )
    if k > n:
        raise QuantTuneError(
            f"{k} folds need at least {k} rows; the data has {n}.",
            f"Choose at most {n} folds, or add rows.",
        )
    import numpy as np
    from sklearn.model_selection import KFold, StratifiedKFold

    rows = np.zeros(n)
    if labels is None:
        folds = KFold(n_splits=k, shuffle=True, random_state=seed).split(rows)
    else:
        names = [str(label) for label in labels]
        _check_label_counts(names, k)
        folds = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(rows, names)
    return [(train.tolist(), test.tolist()) for train, test in folds]


def _check_label_counts(names: list[str], k: int) -> None:
    """Stratified folds need every label in every fold: at least k rows of each."""
    from collections import Counter

    rare = [(label, count) for label, count in sorted(Counter(names).items()) if count < k]
    if rare:
        label, count = rare[0]
        others = f" (and {len(rare) - 1} other label(s))" if len(rare) > 1 else ""
        raise QuantTuneError(
            f"The label '{label}' has {count} row(s){others}: {k} stratified folds need at least {k} "
            "rows of each label.",
            f"Choose at most {count} folds, or add rows of '{label}'."
            if count >= 2
            else f"Add rows of '{label}' (at least {k}), or leave that label out.",
        )
