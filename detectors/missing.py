"""Missing-value rate of one feature: the daemon feeds 1.0 where the feature was missing.

Same test as ``rate_window``; its own spec gives it its own defaults and policy name.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from detectors.rates import RateWindowDetector

if TYPE_CHECKING:
    from detectors.specs import MissingRateSpec

__all__ = ["MissingRateDetector"]

log = logging.getLogger(__name__)


class MissingRateDetector(RateWindowDetector):
    """Share of events whose feature was missing, against ``threshold`` or the reference.

    Examples
    --------
    >>> import numpy as np
    >>> from detectors.specs import MissingRateSpec
    >>> det = MissingRateDetector(MissingRateSpec(threshold=0.1))
    >>> det.update_many(np.r_[np.zeros(800), np.ones(400)]).verdict.value
    'anomaly'
    """

    spec: MissingRateSpec  # type: ignore[assignment]
