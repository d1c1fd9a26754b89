"""Error bars for accuracies: a bootstrap interval per cell, a paired bootstrap between two models.

Why: with a few dozen questions one item moves accuracy by whole points, so a point estimate alone
says nothing. Every accuracy the project reports carries ``n`` and a 95% percentile-bootstrap
interval (:func:`bootstrap_ci`), and two checkpoints scored on the SAME benchmark version are
compared item by item (:func:`paired_diff`: resampling the items both answered keeps the pairing,
so the interval of the difference is much tighter than two independent intervals). Seeded, so the
same outcomes give the same interval. Pure numpy; used by evaluation (cells), promotion (gates)
and the pipeline's results table.

    bootstrap_ci([1, 0, 1, 1])                      # (lo, hi) in percent
    paired_diff({"q1": True, "q2": False}, {"q1": True, "q2": True}).hi
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

N_BOOT = 2000
LEVEL = 0.95


def bootstrap_ci(outcomes: Sequence[float], n_boot: int = N_BOOT, seed: int = 0,
                 level: float = LEVEL) -> tuple[float, float]:
    """Percentile-bootstrap interval of the mean of 0/1 ``outcomes``, in percent; (0, 0) when empty.

    >>> bootstrap_ci([1.0] * 10)
    (100.0, 100.0)
    >>> lo, hi = bootstrap_ci([1, 0] * 20); lo < 50.0 < hi
    True
    """
    x = np.asarray(outcomes, dtype=float)
    if x.size == 0:
        return (0.0, 0.0)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    alpha = (1.0 - level) / 2
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return (round(100.0 * float(lo), 4), round(100.0 * float(hi), 4))


@dataclass(frozen=True)
class PairedDiff:
    """Accuracy of A minus accuracy of B, in points, over the ``n`` items both answered."""

    n: int
    diff: float
    lo: float
    hi: float


def paired_diff(a: Mapping[str, bool], b: Mapping[str, bool], n_boot: int = N_BOOT, seed: int = 0,
                level: float = LEVEL) -> PairedDiff:
    """Paired bootstrap of accuracy(A) − accuracy(B) over the item ids both hold.

    >>> d = paired_diff({f"q{i}": i < 30 for i in range(40)}, {f"q{i}": i < 10 for i in range(40)})
    >>> d.n, d.diff, d.lo > 0
    (40, 50.0, True)
    """
    ids = sorted(set(a) & set(b))
    if not ids:
        return PairedDiff(0, 0.0, 0.0, 0.0)
    d = np.array([float(a[i]) - float(b[i]) for i in ids])
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(n_boot, d.size))].mean(axis=1)
    alpha = (1.0 - level) / 2
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return PairedDiff(len(ids), round(100.0 * float(d.mean()), 4), round(100.0 * float(lo), 4),
                      round(100.0 * float(hi), 4))
