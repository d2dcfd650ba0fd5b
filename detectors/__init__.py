"""driftwarden's detector layer: one small protocol, one module per family, calibrated defaults.

``specs`` validates the policy's ``detector:`` blocks and builds or restores detectors.
"""

from __future__ import annotations

from detectors.base import INCONCLUSIVE, BaseDetector, Detector, Reading, Verdict
from detectors.serialization import StateError
from detectors.specs import (
    AdwinSpec,
    DDMSpec,
    DetectorSpec,
    EDDMSpec,
    HalfSpaceTreesSpec,
    HDDMASpec,
    HDDMWSpec,
    InputKind,
    JensenShannonSpec,
    KSWindowSpec,
    MissingRateSpec,
    PageHinkleySpec,
    PSISpec,
    QuantileSpec,
    RateWindowSpec,
    ReferenceSpec,
    UnseenRateSpec,
    build_detector,
    default_spec,
    parse_spec,
    restore_detector,
)

__all__ = [
    "INCONCLUSIVE",
    "AdwinSpec",
    "BaseDetector",
    "DDMSpec",
    "Detector",
    "DetectorSpec",
    "EDDMSpec",
    "HDDMASpec",
    "HDDMWSpec",
    "HalfSpaceTreesSpec",
    "InputKind",
    "JensenShannonSpec",
    "KSWindowSpec",
    "MissingRateSpec",
    "PSISpec",
    "PageHinkleySpec",
    "QuantileSpec",
    "RateWindowSpec",
    "Reading",
    "ReferenceSpec",
    "StateError",
    "UnseenRateSpec",
    "Verdict",
    "build_detector",
    "default_spec",
    "parse_spec",
    "restore_detector",
]
