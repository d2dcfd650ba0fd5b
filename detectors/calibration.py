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
    "g_statistic_2x2",
    "ks_critical",
    "ks_statistic",
    "ks_statistic_ranked",
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


@functools.lru_cache(maxsize=64)
def _ecdf_steps(n: int) -> tuple[np.ndarray, np.ndarray]:
    """A sorted sample's ECDF at and just before each of its ``n`` points (read-only)."""
    at = np.arange(1, n + 1) / n
    before = at - 1.0 / n
    at.flags.writeable = False
    before.flags.writeable = False
    return at, before


def ks_statistic(sorted_window: np.ndarray, sorted_reference: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov distance, exact, in O(n log m) for sorted inputs.

    The supremum of ``|F_ref - F_win|`` is reached at a jump of the window's ECDF, so the
    reference ECDF is only read at the window's points.

    >>> ks_statistic(np.array([0.0, 1.0]), np.array([0.0, 1.0]))
    0.0
    >>> ks_statistic(np.array([5.0, 6.0]), np.array([0.0, 1.0]))
    1.0
    >>> ks_statistic(np.array([0.5, 1.0, 1.0]), np.array([1.0, 1.0, 2.0, 3.0]))
    0.5
    """
    m = sorted_reference.size
    at, before = _ecdf_steps(sorted_window.size)
    upto = np.searchsorted(sorted_reference, sorted_window, side="right")
    right = upto / m
    # F_ref just below a window point differs from F_ref at it only where the point is also
    # a reference value: the second search is paid only then. (Index -1 for a point below
    # the whole reference reads the largest reference value, which cannot equal it.)
    if (sorted_reference[upto - 1] == sorted_window).any():
        left = np.searchsorted(sorted_reference, sorted_window, side="left") / m
    else:
        left = right
    return float(max((at - right).max(), (left - before).max()))


def ks_statistic_ranked(upto: np.ndarray, below: np.ndarray, m: int) -> float:
    """:func:`ks_statistic` from each window value's count of sorted reference values
    ``<=`` it (``upto``) and ``<`` it (``below``), in any order: the same value.

    A value's counts stay valid while the reference does, so a sliding window searches
    only its new values.

    >>> r = np.array([1.0, 1.0, 2.0, 3.0])
    >>> w = np.array([1.0, 0.5, 1.0])
    >>> up, lo = np.searchsorted(r, w, "right"), np.searchsorted(r, w, "left")
    >>> ks_statistic_ranked(up, lo, r.size) == ks_statistic(np.sort(w), r)
    True
    """
    # Counts grow with the value, so sorting them orders them as the sorted window.
    at, before = _ecdf_steps(upto.size)
    right = np.sort(upto) / m
    left = np.sort(below) / m if (upto != below).any() else right
    return float(max((at - right).max(), (left - before).max()))


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
    # Column-major like the column selection below makes it: the same summation order.
    table = np.array([window_counts, reference_counts], dtype=np.float64, order="F")
    cols = table.sum(axis=0)
    seen = cols > 0
    if not seen.all():
        table = table[:, seen]
        cols = cols[seen]
    total = table.sum()
    if total <= 0 or table.shape[1] < 2:
        return 0.0
    expected = table.sum(axis=1)[:, None] * cols[None, :] / total
    nz = table > 0
    observed = table[nz]
    return float(max(0.0, 2.0 * np.sum(observed * np.log(observed / expected[nz]))))


def g_statistic_2x2(w0: float, w1: float, r0: float, r1: float) -> float:
    """:func:`g_statistic` of the window counts ``(w0, w1)`` against ``(r0, r1)``, same value.

    Rates and tails test a 2x2 table at every stride: scalar arithmetic where it is exact
    for counts, numpy for the log and the sum so the result matches bit for bit.

    >>> g_statistic_2x2(3.0, 97.0, 12.0, 988.0) == g_statistic(
    ...     np.array([3.0, 97.0]), np.array([12.0, 988.0]))
    True
    """
    c0 = w0 + r0
    c1 = w1 + r1
    total = w0 + w1 + r0 + r1
    if total <= 0 or c0 <= 0 or c1 <= 0:
        return 0.0
    s0 = w0 + w1
    s1 = r0 + r1
    observed = [w0, w1, r0, r1]
    expected = [s0 * c0 / total, s0 * c1 / total, s1 * c0 / total, s1 * c1 / total]
    keep = [i for i in range(4) if observed[i] > 0]
    table = np.array([observed[i] for i in keep])
    ratio = np.array([observed[i] / expected[i] for i in keep])
    return float(max(0.0, 2.0 * np.sum(table * np.log(ratio))))


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
