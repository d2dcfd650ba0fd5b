"""Calibration: family-wise error budgets, autocorrelation-aware sample sizes, critical values.

Every windowed detector turns its policy (``false_alarm_every``, ``stride``, family size) into a
per-test alpha here, and discounts its samples by the reference's autocorrelation time.
"""

from __future__ import annotations

import functools
import logging
import math
from statistics import NormalDist

import numpy as np

__all__ = [
    "Persistence",
    "autocorrelation_time",
    "chi2_critical",
    "g_statistic",
    "ks_critical",
    "ks_statistic",
    "normal_isf",
    "normal_sf",
    "test_alpha",
]

log = logging.getLogger(__name__)


def test_alpha(false_alarm_every: float, stride: int, family_size: int) -> float:
    """Per-test alpha that keeps a family's expected false alarms to one per ``false_alarm_every``.

    A detector tests once per ``stride`` events, so a stream of ``false_alarm_every`` events sees
    ``false_alarm_every / stride`` tests; Bonferroni across the ``family_size`` signals of one
    family (100 features of one model) keeps the model-level target. Overlapping windows make
    consecutive tests positively correlated, which makes the bound conservative.

    >>> test_alpha(10_000_000, 100, 1), test_alpha(10_000_000, 100, 100)
    (1e-05, 1e-07)
    """
    return min(0.05, stride / (false_alarm_every * family_size))


def autocorrelation_time(x: np.ndarray, *, c: float = 5.0) -> float:
    """Integrated autocorrelation time of ``x`` (1 for independent values).

    ``n / tau`` is the effective sample size of a window of ``n`` values. Sokal's automatic
    window: the sum of autocorrelations runs to the smallest lag ``M >= c * tau(M)``, which
    keeps the noise of far lags out while catching slow components (AR(1), seasonality).

    >>> rng = np.random.default_rng(0)
    >>> round(autocorrelation_time(rng.normal(size=20_000)), 1)
    1.0
    """
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    n = x.size
    if n < 20:
        return 1.0
    centred = x - x.mean()
    var = float(centred @ centred)
    if var <= 0.0:
        return 1.0
    size = 1 << int(2 * n - 1).bit_length()
    spectrum = np.fft.rfft(centred, size)
    acf = np.fft.irfft(spectrum * np.conj(spectrum), size)[:n] / var
    taus = 2.0 * np.cumsum(acf) - 1.0
    lags = np.arange(n)
    ok = lags >= c * taus
    window = int(np.argmax(ok)) if ok.any() else n - 1
    return float(min(max(taus[window], 1.0), n / 2.0))


def ks_statistic(sorted_window: np.ndarray, sorted_reference: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov distance, exact, in O(n log m) for sorted inputs.

    The supremum of ``|F_ref - F_win|`` is reached at a jump of the window's ECDF, so the
    reference ECDF is only read at the window's points.

    >>> ks_statistic(np.array([0.0, 1.0]), np.array([0.0, 1.0]))
    0.0
    >>> ks_statistic(np.array([5.0, 6.0]), np.array([0.0, 1.0]))
    1.0
    """
    n = sorted_window.size
    m = sorted_reference.size
    right = np.searchsorted(sorted_reference, sorted_window, side="right") / m
    left = np.searchsorted(sorted_reference, sorted_window, side="left") / m
    steps = np.arange(1, n + 1) / n
    return float(max(np.max(steps - right), np.max(left - (steps - 1.0 / n))))


def ks_critical(alpha: float, n_eff: float, m_eff: float) -> float:
    """Asymptotic critical KS distance for effective sample sizes ``n_eff`` and ``m_eff``.

    >>> round(ks_critical(0.05, 1000, 10_000), 4)
    0.045
    """
    c = math.sqrt(-0.5 * math.log(alpha / 2.0))
    return c * math.sqrt((n_eff + m_eff) / (n_eff * m_eff))


_NORMAL = NormalDist()


def normal_isf(p: float) -> float:
    """Upper-tail quantile of the standard normal: ``P(Z > normal_isf(p)) = p``.

    >>> round(normal_isf(0.025), 3)
    1.96
    """
    return _NORMAL.inv_cdf(1.0 - p) if p < 0.5 else -_NORMAL.inv_cdf(p)


def normal_sf(z: float) -> float:
    """``P(Z > z)`` for the standard normal."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


@functools.lru_cache(maxsize=256)
def chi2_critical(alpha: float, dof: int) -> float:
    """The chi-square quantile a G statistic with ``dof`` degrees of freedom is compared to.

    Exact for one degree of freedom, Wilson-Hilferty otherwise (within about 1% in the far
    tails that family-wise alphas reach).

    >>> round(chi2_critical(0.05, 1), 3), round(chi2_critical(1e-5, 49), 1)
    (3.841, 103.4)
    """
    z = normal_isf(alpha)
    if dof <= 1:
        return normal_isf(alpha / 2.0) ** 2
    h = 2.0 / (9.0 * dof)
    return float(dof * (1.0 - h + z * math.sqrt(h)) ** 3)


def g_statistic(window_counts: np.ndarray, reference_counts: np.ndarray) -> float:
    """Likelihood-ratio (G) statistic of homogeneity between two count vectors.

    Better behaved in the far tail than Pearson's chi-square for small expected counts.

    >>> g_statistic(np.array([10.0, 90.0]), np.array([100.0, 900.0]))
    0.0
    """
    table = np.vstack([window_counts, reference_counts]).astype(np.float64)
    table = table[:, table.sum(axis=0) > 0]
    total = table.sum()
    if total <= 0 or table.shape[1] < 2:
        return 0.0
    expected = np.outer(table.sum(axis=1), table.sum(axis=0)) / total
    nz = table > 0
    return float(max(0.0, 2.0 * np.sum(table[nz] * np.log(table[nz] / expected[nz]))))


class Persistence:
    """A breach counts only once it has held, test after test, for ``span`` events.

    >>> gate = Persistence(200)
    >>> [gate.step(True, at) for at in (100, 200, 300)]
    [False, False, True]
    >>> gate.step(False, 400), gate.step(True, 500)
    (False, False)
    """

    __slots__ = ("since", "span")

    def __init__(self, span: int) -> None:
        self.span = span
        self.since: int | None = None

    def step(self, candidate: bool, at: int) -> bool:
        if not candidate:
            self.since = None
            return False
        if self.since is None:
            self.since = at
        return at - self.since >= self.span
