"""The report's statistics, by hand (no scipy): Student t intervals and t-tests over seeds.

- `t_cdf(t, df)`: the t distribution's CDF through the regularized incomplete beta function,
  P(T <= t) = 1 - I_x(df/2, 1/2) / 2 for t >= 0 with x = df / (df + t^2), evaluated with its
  continued fraction (modified Lentz; Numerical Recipes 6.4);
- `t_quantile(p, df)`: the inverse, by bisection on `t_cdf` (any real df > 0, which Welch needs);
- `mean_interval`: mean and the half-width of its confidence interval, t(1 - a/2, n-1) * s / sqrt(n);
- `welch`: the difference of two means with its interval and two-sided p-value, unequal variances,
  Welch-Satterthwaite degrees of freedom;
- `paired`: the same on per-seed differences (paired t-test, n - 1 degrees of freedom).

With fewer than two values on a side, or no spread at all, the results are NaN: no uncertainty
can be given. tests/test_stats.py checks these against hand-computed values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

LEVEL = 0.95  # the report's confidence level
EPS, TINY, MAX_TERMS = 1e-15, 1e-300, 500
ROUNDING = 1e-9  # values closer than this (relative) count as equal: 0.91 - 0.90 vs 0.90 - 0.89 in floats


def _beta_fraction(x: float, a: float, b: float) -> float:
    """The continued fraction of I_x(a, b) (Numerical Recipes' betacf), by the modified Lentz method."""
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > TINY else TINY)
    result = d
    for m in range(1, MAX_TERMS + 1):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),  # even step
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):  # odd step
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > TINY else TINY)
            c = 1.0 + numerator / c
            c = c if abs(c) > TINY else TINY
            result *= d * c
        if abs(d * c - 1.0) < EPS:
            break
    return result


def incomplete_beta(x: float, a: float, b: float) -> float:
    """The regularized incomplete beta function I_x(a, b) for 0 <= x <= 1 and a, b > 0."""
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"incomplete_beta needs 0 <= x <= 1, got {x}")
    if x in (0.0, 1.0):
        return x
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):  # the fraction converges fast here; else use the symmetry
        return math.exp(log_front) * _beta_fraction(x, a, b) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(1.0 - x, b, a) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t distribution with df > 0 degrees of freedom."""
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    tail = 0.5 * incomplete_beta(df / (df + t * t), df / 2.0, 0.5)  # P(T > |t|)
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The t with P(T <= t) = p for Student's t with df > 0 degrees of freedom, to ~1e-12."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"t_quantile needs 0 < p < 1, got {p}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:  # bracket: the quantile is below the first power of two past it
        low, high = high, 2.0 * high
    for _ in range(200):
        middle = 0.5 * (low + high)
        low, high = (middle, high) if t_cdf(middle, df) < p else (low, middle)
        if high - low <= 1e-12 * max(1.0, high):
            break
    return 0.5 * (low + high)


def two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with df degrees of freedom."""
    return incomplete_beta(df / (df + t * t), df / 2.0, 0.5) if math.isfinite(t) else 0.0


def mean_and_variance(values) -> tuple[float, float, int]:
    """(mean, sample variance with n - 1, n); NaN below two values, 0 for values equal up to rounding."""
    values = [float(v) for v in values]
    n = len(values)
    mean = sum(values) / n if n else math.nan
    variance = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else math.nan
    if variance <= (ROUNDING * max(map(abs, values), default=0.0)) ** 2:  # equal up to float rounding
        variance = 0.0
    return mean, variance, n


def mean_interval(values, level: float = LEVEL) -> tuple[float, float]:
    """(mean, half-width of its `level` Student t interval); the half-width is NaN below two values."""
    mean, variance, n = mean_and_variance(values)
    if n < 2:
        return mean, math.nan
    return mean, t_quantile(0.5 + level / 2.0, n - 1) * math.sqrt(variance / n)


@dataclass(frozen=True)
class Difference:
    """A difference of means (a - b) with its confidence interval and two-sided t-test."""

    kind: str  # "welch" or "paired"
    difference: float
    low: float  # the interval; NaN when no uncertainty can be given
    high: float
    p_value: float
    df: float
    n_a: int
    n_b: int


def _difference(kind: str, difference: float, standard_error: float, df: float, n_a: int, n_b: int,
                level: float) -> Difference:
    """The interval and p-value of `difference` given its standard error and degrees of freedom."""
    if not (standard_error > 0 and df > 0):  # NaN, or no spread between seeds at all: no test
        return Difference(kind, difference, math.nan, math.nan, math.nan, math.nan, n_a, n_b)
    half = t_quantile(0.5 + level / 2.0, df) * standard_error
    p_value = two_sided_p(difference / standard_error, df)
    return Difference(kind, difference, difference - half, difference + half, p_value, df, n_a, n_b)


def welch(a, b, level: float = LEVEL) -> Difference:
    """mean(a) - mean(b), Welch's unequal-variance t-test and interval (Welch-Satterthwaite df)."""
    mean_a, var_a, n_a = mean_and_variance(a)
    mean_b, var_b, n_b = mean_and_variance(b)
    if n_a < 2 or n_b < 2:
        return _difference("welch", mean_a - mean_b, math.nan, math.nan, n_a, n_b, level)
    share_a, share_b = var_a / n_a, var_b / n_b  # squared standard errors of each mean
    variance = share_a + share_b
    denominator = share_a**2 / (n_a - 1) + share_b**2 / (n_b - 1)
    df = variance**2 / denominator if denominator > 0 else math.nan
    return _difference("welch", mean_a - mean_b, math.sqrt(variance), df, n_a, n_b, level)


def paired(a, b, level: float = LEVEL) -> Difference:
    """mean(a - b) over matched pairs (a[i] with b[i]): the paired t-test and interval, n - 1 df."""
    a, b = list(a), list(b)
    if len(a) != len(b):
        raise ValueError(f"paired needs matched values, got {len(a)} and {len(b)}")
    mean, variance, n = mean_and_variance([x - y for x, y in zip(a, b)])
    standard_error = math.sqrt(variance / n) if n > 1 else math.nan
    return _difference("paired", mean, standard_error, n - 1, n, n, level)
