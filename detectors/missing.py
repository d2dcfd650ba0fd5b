"""Missing-value rate of one feature: the daemon feeds 1.0 where the feature was missing.

Same test as ``rate_window``; its own spec gives it its own defaults and policy name.
"""

from __future__ import annotations

import logging
from typing import Literal

from pydantic import Field

from detectors.base import BaseDetector
from detectors.rates import ThresholdRateSpec, WindowRateDetector, WindowRateLimitDetector

__all__ = ["MissingRateDetector", "MissingRateLimitDetector", "MissingRateSpec"]

log = logging.getLogger(__name__)


class MissingRateSpec(ThresholdRateSpec):
    """Missing-value rate of one feature (input 1.0 = missing), like ``rate_window``."""

    type: Literal["missing_rate"] = "missing_rate"
    threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    min_difference: float = Field(default=0.02, ge=0.0, le=1.0)


class MissingRateDetector(WindowRateDetector[MissingRateSpec]):
    """Share of events whose feature was missing, against the reference
    (:class:`MissingRateLimitDetector` with a ``threshold``).

    Examples
    --------
    >>> import numpy as np
    >>> spec = MissingRateSpec(threshold=0.1)
    >>> det = MissingRateDetector.variant_for(spec)(spec)
    >>> type(det).__name__, det.update_many(np.r_[np.zeros(800), np.ones(400)]).verdict.value
    ('MissingRateLimitDetector', 'anomaly')
    """

    spec_class = MissingRateSpec

    @classmethod
    def variant_for(cls, spec: MissingRateSpec) -> type[BaseDetector[MissingRateSpec]]:
        return MissingRateLimitDetector if spec.threshold is not None else cls


class MissingRateLimitDetector(WindowRateLimitDetector[MissingRateSpec]):
    """``missing_rate`` with a ``threshold``: the missing rate against that absolute limit."""

    spec_class = MissingRateSpec
