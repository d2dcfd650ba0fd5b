"""The registry of detector types: one line per detector, from which the policy's
``DetectorSpec`` union (discriminated by ``type``) and the spec -> detector class map are
built; ``build_detector`` and ``restore_detector`` go through it.

Dependencies run one way: the detector modules define each spec beside its detector and
know nothing of this module; this module imports them. Adding a detector is one module
(spec + detector class naming it in ``spec_class``) and one line in ``DETECTORS``.
"""

from __future__ import annotations

import functools
import logging
import operator
from typing import TYPE_CHECKING, Annotated, Any, TypeAlias

from pydantic import Field, TypeAdapter, ValidationError

from detectors.base import STATE_VERSION, BaseDetector, DetectorSpecBase, InputKind, SpecT
from detectors.categorical import JensenShannonDetector, PSIDetector, PSISpec, UnseenRateDetector
from detectors.joint import JointDriftDetector
from detectors.missing import MissingRateDetector
from detectors.multivariate import HalfSpaceTreesDetector, HalfSpaceTreesSpec
from detectors.novelty import NoveltyRateDetector
from detectors.numeric import AdwinDetector, KSWindowDetector, KSWindowSpec, PageHinkleyDetector
from detectors.quantile import QuantileDetector
from detectors.rates import (
    DDMDetector,
    EDDMDetector,
    HDDMADetector,
    HDDMWDetector,
    RateWindowDetector,
    RateWindowSpec,
)
from detectors.serialization import StateError, unpack

__all__ = [
    "DETECTORS",
    "TYPES",
    "DetectorSpec",
    "build_detector",
    "default_spec",
    "detector_class",
    "parse_spec",
    "restore_detector",
]

log = logging.getLogger(__name__)

#: Every detector type, one line each; its spec is ``spec_class``. The union's order (and
#: that of "expected tags" in a policy error) is this order.
DETECTORS: tuple[type[BaseDetector[Any]], ...] = (
    AdwinDetector,
    PageHinkleyDetector,
    KSWindowDetector,
    PSIDetector,
    JensenShannonDetector,
    UnseenRateDetector,
    DDMDetector,
    EDDMDetector,
    HDDMADetector,
    HDDMWDetector,
    RateWindowDetector,
    QuantileDetector,
    MissingRateDetector,
    HalfSpaceTreesDetector,
    JointDriftDetector,
    NoveltyRateDetector,
)

#: The calibrated default detector of each input kind (specs are frozen: shared).
_DEFAULTS: dict[InputKind, DetectorSpecBase] = {
    InputKind.NUMERIC: KSWindowSpec(),
    InputKind.CATEGORICAL: PSISpec(),
    InputKind.BINARY: RateWindowSpec(),
    InputKind.MULTIVARIATE: HalfSpaceTreesSpec(),
}


def _class_map() -> dict[type[DetectorSpecBase], type[BaseDetector[Any]]]:
    classes: dict[type[DetectorSpecBase], type[BaseDetector[Any]]] = {}
    names: dict[str, type[BaseDetector[Any]]] = {}
    for cls in DETECTORS:
        spec_class = cls.spec_class
        name = spec_class.model_fields["type"].default
        taken = classes.get(spec_class) or names.get(name)
        if taken is not None:
            raise TypeError(f"{cls.__name__}: spec {name!r} already belongs to {taken.__name__}")
        classes[spec_class] = names[name] = cls
    return classes


_CLASSES = _class_map()

#: The policy names (``type``) of the registered detectors, in registry order.
TYPES: tuple[str, ...] = tuple(spec.model_fields["type"].default for spec in _CLASSES)

if TYPE_CHECKING:
    #: A validated ``detector:`` block: one of the registered specs.
    DetectorSpec: TypeAlias = DetectorSpecBase
else:
    DetectorSpec = Annotated[functools.reduce(operator.or_, _CLASSES), Field(discriminator="type")]

_SPEC_ADAPTER: TypeAdapter[DetectorSpecBase] = TypeAdapter(DetectorSpec)


def parse_spec(raw: Any) -> DetectorSpecBase:
    """Validate a ``detector:`` mapping (raises pydantic's ``ValidationError``).

    >>> parse_spec({"type": "rate_window", "window": 500}).window
    500
    """
    return _SPEC_ADAPTER.validate_python(raw)


def default_spec(kind: InputKind) -> DetectorSpecBase:
    """The calibrated default detector for an input kind.

    >>> default_spec(InputKind.NUMERIC).type
    'ks_window'
    """
    return _DEFAULTS[kind]


def detector_class(spec: SpecT) -> type[BaseDetector[SpecT]]:
    """The class that runs ``spec`` (a registered detector, or the variant it picks).

    >>> [detector_class(RateWindowSpec(threshold=t)).__name__ for t in (None, 0.1)]
    ['RateWindowDetector', 'RateLimitDetector']
    """
    try:
        registered = _CLASSES[type(spec)]
    except KeyError:
        raise TypeError(f"not a registered detector spec: {spec!r}") from None
    chosen: type[BaseDetector[SpecT]] = registered.variant_for(spec)
    return chosen


def build_detector(spec: SpecT, *, family_size: int = 1, seed: int = 0) -> BaseDetector[SpecT]:
    """A fresh detector for ``spec``, corrected for ``family_size`` signals of one family.

    >>> import numpy as np
    >>> det = build_detector(RateWindowSpec(threshold=0.1, window=100, min_samples=50, stride=10))
    >>> det.update_many(np.zeros(100)).verdict.value
    'ok'
    """
    return detector_class(spec)(spec, family_size=family_size, seed=seed)


def restore_detector(data: bytes) -> BaseDetector[Any]:
    """Rebuild a detector, of any type, from ``detector.to_bytes()``."""
    raw = unpack(data)
    if raw.get("v") != STATE_VERSION:
        raise StateError(f"detector state version {raw.get('v')!r}, expected {STATE_VERSION}")
    try:
        spec = parse_spec(raw["spec"])
    except (ValidationError, KeyError) as err:
        raise StateError(f"detector state holds an invalid spec: {err}") from err
    detector = build_detector(spec, family_size=int(raw["family_size"]), seed=int(raw["seed"]))
    detector._load(raw["state"])
    detector._load_last(raw["last"])
    return detector
