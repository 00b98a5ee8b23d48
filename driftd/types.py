"""driftd's value types: what DriftDB takes and returns, and what the client returns.

Times are timezone-aware UTC ``datetime``s at the API and float seconds since the
Unix epoch inside. Vectors are ``numpy.float32`` arrays of shape ``(d,)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

import numpy as np

Distance = Literal["cosine", "l2", "ip"]
Stability = Literal["stable", "saddle", "unstable"]


@dataclass
class Point:
    """One timestamped observation.

    On input ``time`` may be None only to be rejected with INVALID_TIMESTAMP;
    ``vector`` or ``text`` is required. On output ``vector`` is None unless asked for.
    """

    id: str
    time: datetime | None
    series: str = ""
    vector: np.ndarray | None = None
    text: str | None = None
    payload: dict[str, str | float | int | bool] = field(default_factory=dict)


Scalar = str | float | int | bool


@dataclass(frozen=True)
class PayloadCondition:
    """A typed condition on one payload value (``driftd.v1.PayloadCondition``).

    Set the range bounds (``gt``/``gte``/``lt``/``lte``: a number within them),
    or ``any_of`` (the value is one of these), or ``none_of`` (none of these);
    exactly one kind per condition. Set values hold one type (strings, numbers
    or bools). A point without ``key`` matches only ``none_of``.
    """

    key: str
    gt: float | None = None
    gte: float | None = None
    lt: float | None = None
    lte: float | None = None
    any_of: tuple[Scalar, ...] | None = None
    none_of: tuple[Scalar, ...] | None = None


@dataclass(frozen=True)
class CollectionInfo:
    """A collection's settings and live counts."""

    name: str  # collection id, without the "collections/" prefix
    dimension: int
    distance: Distance
    embed_model: str  # "" when texts are refused
    point_count: int
    series_count: int
    start_time: datetime | None
    end_time: datetime | None
    create_time: datetime
    version: int
    time_key: str = ""
    series_key: str = ""
    attached: bool = False
    #: The owner replica's address (server mode with peers); "" otherwise.
    owner: str = ""


@dataclass(frozen=True)
class PointError:
    """Why point ``index`` of a batch was rejected (``reason`` is an ErrorReason name)."""

    index: int
    id: str
    reason: str
    message: str


@dataclass(frozen=True)
class UpsertResult:
    """Outcome of a batch write. ``errors`` is non-empty only for lenient (stream) writes."""

    upserted: int
    embedded: int
    version: int
    errors: tuple[PointError, ...] = ()


@dataclass(frozen=True)
class ScoredPoint:
    """A search hit; ``distance`` in the collection's distance."""

    point: Point
    distance: float


@dataclass(frozen=True)
class FlowProbe:
    """The flow at one position. ``velocity`` (d,) float32 in units per second;
    ``confidence`` in [0, 1], the bootstrap refits' agreement on its direction, damped
    outside the data's support (see ProbeFlowResponse in flow.proto)."""

    velocity: np.ndarray
    speed: float
    speed_per_step: float
    confidence: float
    support: float
    in_support: bool
    nearest_point_id: str


@dataclass(frozen=True)
class SimulationStep:
    """One step of one simulated path; ``position`` (d,) float32.

    ``ensemble_position`` (d,) float32, the mean of the bootstrap refits' paths (empty
    without vectors), and ``band_radius`` (embedding units) the radius around it that
    holds the requested coverage of them (see SimulatePathsResponse in flow.proto).
    """

    path: int
    step: int
    time: datetime
    position: np.ndarray
    speed: float
    nearest_point_id: str
    nearest_similarity: float
    support: float
    in_support: bool
    stop_reason: str = ""
    ensemble_position: np.ndarray | None = None
    band_radius: float = 0.0


@dataclass(frozen=True)
class Representative:
    """A stored point standing for an attractor or a chapter."""

    id: str
    time: datetime
    text: str
    similarity: float


@dataclass(frozen=True)
class AttractorInfo:
    """A fixed point of the flow. ``center`` (d,) float32; ``eigenvalues`` real parts, 1/second."""

    id: str
    stability: Stability
    center: np.ndarray
    basin_fraction: float
    eigenvalues: tuple[float, ...]
    speed: float
    reproducibility: float
    representatives: tuple[Representative, ...]


@dataclass(frozen=True)
class ChapterInfo:
    """A regime of the timeline: points ``[start, end]`` in time order."""

    index: int
    start_time: datetime
    end_time: datetime
    point_count: int
    start_point_id: str
    end_point_id: str
    representatives: tuple[Representative, ...]
    attractor_id: str


@dataclass(frozen=True)
class AttractorSet:
    """FindAttractors' answer: fixed points, largest basin first, the collection
    version the flow was fitted on and the number of bootstrap refits behind each
    attractor's ``reproducibility``."""

    attractors: tuple[AttractorInfo, ...]
    version: int
    bootstrap: int = 0


@dataclass(frozen=True)
class ChapterSet:
    """DetectChapters' answer: chapters in time order and the collection version."""

    chapters: tuple[ChapterInfo, ...]
    version: int
