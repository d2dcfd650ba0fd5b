"""driftwarden's detector layer: one small protocol, one module per family, calibrated defaults.

Each family module defines its specs (the policy's ``detector:`` blocks) beside its
detectors; ``registry`` gathers them into the policy's union and builds or restores
detectors.
"""

from __future__ import annotations

from detectors.base import (
    INCONCLUSIVE,
    BaseDetector,
    Detector,
    DetectorSpecBase,
    InputKind,
    Reading,
    Verdict,
)
from detectors.categorical import JensenShannonSpec, PSISpec, UnseenRateSpec
from detectors.joint import JointDriftSpec
from detectors.missing import MissingRateSpec
from detectors.multivariate import HalfSpaceTreesSpec
from detectors.novelty import NoveltyRateSpec
from detectors.numeric import AdwinSpec, KSWindowSpec, PageHinkleySpec
from detectors.quantile import QuantileSpec
from detectors.rates import DDMSpec, EDDMSpec, HDDMASpec, HDDMWSpec, RateWindowSpec
from detectors.registry import (
    DETECTORS,
    DetectorSpec,
    build_detector,
    default_spec,
    detector_class,
    parse_spec,
    restore_detector,
)
from detectors.serialization import StateError
from detectors.window import ReferenceSpec

__all__ = [
    "DETECTORS",
    "INCONCLUSIVE",
    "AdwinSpec",
    "BaseDetector",
    "DDMSpec",
    "Detector",
    "DetectorSpec",
    "DetectorSpecBase",
    "EDDMSpec",
    "HDDMASpec",
    "HDDMWSpec",
    "HalfSpaceTreesSpec",
    "InputKind",
    "JensenShannonSpec",
    "JointDriftSpec",
    "KSWindowSpec",
    "MissingRateSpec",
    "NoveltyRateSpec",
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
    "detector_class",
    "parse_spec",
    "restore_detector",
]
