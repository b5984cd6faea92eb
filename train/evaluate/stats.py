"""95% intervals for accuracies measured on a sample of problems.

`wilson_interval` for one accuracy (Wilson 1927: it stays inside [0, 1] and holds its coverage
near 0 and 1, where the normal approximation does not); `paired_difference_interval` for the
difference of two models' accuracies on the same problems (Newcombe 1998, method 10: Wilson
intervals of each accuracy combined with the correlation of the paired outcomes).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

Z_95 = 1.959963984540054
"""The standard normal quantile of a two-sided 95% interval."""


@dataclass(frozen=True)
class Estimate:
    value: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"


def wilson_interval(successes: int, n: int, z: float = Z_95) -> Estimate:
    """The accuracy successes / n with its Wilson score interval."""
    if n <= 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n > 0, got {successes} of {n}")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return Estimate(p, max(0.0, centre - half), min(1.0, centre + half))


def paired_difference_interval(
    before: Sequence[bool], after: Sequence[bool], z: float = Z_95
) -> Estimate:
    """accuracy(after) - accuracy(before) on the same problems, with Newcombe's interval."""
    n = len(before)
    if n == 0 or len(after) != n:
        raise ValueError(f"need two equally long non-empty outcome lists, got {n} and {len(after)}")
    both = sum(b and a for b, a in zip(before, after))
    gained = sum(a and not b for b, a in zip(before, after))
    lost = sum(b and not a for b, a in zip(before, after))
    neither = n - both - gained - lost
    p_after, p_before = (both + gained) / n, (both + lost) / n
    after_ci, before_ci = wilson_interval(both + gained, n, z), wilson_interval(both + lost, n, z)
    margins = (both + gained) * (lost + neither) * (both + lost) * (gained + neither)
    agreement = both * neither - gained * lost
    if margins == 0:
        phi = 0.0
    elif agreement > 0:  # Newcombe's continuity correction of the correlation
        phi = max(agreement - n / 2, 0.0) / math.sqrt(margins)
    else:
        phi = agreement / math.sqrt(margins)
    a_low, a_high = p_after - after_ci.low, after_ci.high - p_after
    b_low, b_high = p_before - before_ci.low, before_ci.high - p_before
    below = math.sqrt(max(a_low**2 - 2 * phi * a_low * b_high + b_high**2, 0.0))
    above = math.sqrt(max(a_high**2 - 2 * phi * a_high * b_low + b_low**2, 0.0))
    difference = p_after - p_before
    return Estimate(difference, max(-1.0, difference - below), min(1.0, difference + above))
