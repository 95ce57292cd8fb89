"""Confidence intervals for a mean over a few replicas: Student's t quantiles in NumPy and the standard library.

With n replicas x_1..x_n, mean m and sample standard deviation s (n − 1 in
the denominator), the 95% interval of the mean is

    m ± t_{0.975, n−1} · s / √n

where t_{p, ν} is the p-quantile of Student's t with ν degrees of freedom.
For the two to ten seeds a research ensemble has, t is far from the normal
1.96 (12.7 for two replicas, 4.30 for three), which is why nothing here ever
writes "2 SE". The quantile inverts the t distribution function, which is a
regularized incomplete beta function, evaluated by its continued fraction.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence

import numpy as np

CONFIDENCE = 0.95
_FRACTION_TERMS = 300  # the continued fraction converges in far fewer for the ν and x of a t quantile
_TINY = 1e-300
_BISECTIONS = 200  # halvings of the bracket: far past float64 resolution


def _beta_fraction(a: float, b: float, x: float) -> float:
  """The continued fraction of I_x(a, b), evaluated by the modified Lentz method."""
  c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
  d = 1.0 / (d if abs(d) > _TINY else _TINY)
  result = d
  for m in range(1, _FRACTION_TERMS + 1):
    for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                      -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
      d = 1.0 + numerator * d
      d = 1.0 / (d if abs(d) > _TINY else _TINY)
      c = 1.0 + numerator / c
      c = c if abs(c) > _TINY else _TINY
      result *= c * d
    if abs(c * d - 1.0) < 1e-16:
      break
  return result


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
  """I_x(a, b) = B(x; a, b) / B(a, b) for a, b > 0 and 0 ≤ x ≤ 1."""
  if x <= 0.0:
    return 0.0
  if x >= 1.0:
    return 1.0
  log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
  # The fraction converges fast only below the mean of Beta(a, b); above it, use I_x(a, b) = 1 − I_{1−x}(b, a).
  if x < (a + 1.0) / (a + b + 2.0):
    return math.exp(log_front) * _beta_fraction(a, b, x) / a
  return 1.0 - math.exp(log_front) * _beta_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
  """P(T ≤ t) for Student's t with `df` degrees of freedom."""
  tail = 0.5 * regularized_incomplete_beta(df / 2.0, 0.5, df / (df + t * t))  # P(T > |t|)
  return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
  """The p-quantile of Student's t with `df` > 0 degrees of freedom, to float64 precision (bisection of t_cdf)."""
  if not 0.0 < p < 1.0:
    raise ValueError(f"a quantile needs 0 < p < 1, got {p}")
  if not df > 0:
    raise ValueError(f"Student's t needs df > 0 degrees of freedom, got {df}")
  if p == 0.5:
    return 0.0  # the median, which bisection would only approach
  if p < 0.5:
    return -t_quantile(1.0 - p, df)
  low, high = 0.0, 1.0
  while t_cdf(high, df) < p:
    low, high = high, 2.0 * high
  for _ in range(_BISECTIONS):
    middle = 0.5 * (low + high)
    if middle in (low, high):
      break
    low, high = (middle, high) if t_cdf(middle, df) < p else (low, middle)
  return 0.5 * (low + high)


@functools.lru_cache(maxsize=None)  # one bisection per replica count, not one per step of a figure
def t_critical(n: int, confidence: float = CONFIDENCE) -> float:
  """The t multiplier of a two-sided `confidence` interval of a mean over n ≥ 2 values (n − 1 degrees of freedom)."""
  if n < 2:
    raise ValueError(f"an interval of a mean needs at least 2 values, got {n}")
  return t_quantile(0.5 + confidence / 2.0, n - 1)


@dataclasses.dataclass(frozen=True)
class MeanInterval:
  """A mean over replicas with its t interval; `half_width` and `std` are NaN for fewer than 2 values."""
  mean: float
  half_width: float  # t_{(1+c)/2, n−1} · std / √n
  std: float  # sample standard deviation (n − 1 in the denominator)
  n: int
  minimum: float
  maximum: float
  confidence: float = CONFIDENCE

  @property
  def low(self) -> float:
    return self.mean - self.half_width

  @property
  def high(self) -> float:
    return self.mean + self.half_width


def mean_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> MeanInterval:
  """Mean, t interval, standard deviation, count and range of the finite `values` (non-finite ones left out)."""
  values = np.asarray(values, np.float64)
  values = values[np.isfinite(values)]
  n = int(values.size)
  if n == 0:
    return MeanInterval(math.nan, math.nan, math.nan, 0, math.nan, math.nan, confidence)
  std = float(values.std(ddof=1)) if n > 1 else math.nan
  half = t_critical(n, confidence) * std / math.sqrt(n) if n > 1 else math.nan
  return MeanInterval(float(values.mean()), half, std, n, float(values.min()), float(values.max()), confidence)


def column_intervals(values_NxS: np.ndarray, confidence: float = CONFIDENCE) -> tuple[np.ndarray, np.ndarray]:
  """Per column (a step) of N replicas: (mean [S], t half-width [S]); a column's n counts its finite entries."""
  intervals = [mean_interval(column, confidence) for column in np.asarray(values_NxS, np.float64).T]
  return np.array([i.mean for i in intervals]), np.array([i.half_width for i in intervals])
