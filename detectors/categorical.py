"""Placeholder while the categorical family is written.

Building one of its detectors raises NotImplementedError.
"""

from __future__ import annotations

from typing import Any

from detectors.window import WindowedDetector


class _Pending(WindowedDetector):
    def __init__(self, spec: Any, *, family_size: int = 1, seed: int = 0) -> None:
        raise NotImplementedError(f"{spec.type} is not implemented yet")

    def _on_reference(self) -> None: ...

    def _test(self) -> tuple[float, float, float, bool]:
        raise NotImplementedError


PSIDetector = JensenShannonDetector = UnseenRateDetector = _Pending
QuantileDetector = HalfSpaceTreesDetector = _Pending
