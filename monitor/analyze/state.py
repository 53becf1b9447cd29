"""The analyzer's persistent state: per segment, one track per reward-model identity.

A **track** is everything the detectors know about one segment scored by one reward model: the
reference being gathered (then frozen as a :class:`Calibration`), the CUSUM sums, a ring of the
latest stream entries (enough for the attribution, rank and resolve windows), the open episodes,
and the sufficient statistics of the per-sample divergence regressions. A new scorer identity (a
new RM, or a new producer ``model_version`` when rewards come from the producer) starts a new track
on its own labels, so a calibration never mixes two reward models.

The whole state is plain data and round-trips through JSON (:meth:`SegmentState.to_json`): arrays
travel as base64 of their float64 bytes, so a reloaded state gives bit-identical results and a run
that resumes from a checkpoint agrees with one that never stopped (the divergence moments up to
the float rounding of sums taken in other batches; they never decide an alert).

>>> track = Track("producer@v1")
>>> SegmentState.from_json(SegmentState("payments/*/*", {"producer@v1": track}).to_json()).tracks["producer@v1"]
Track(identity='producer@v1', ...)
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from monitor.analyze.calibration import Calibration
from monitor.signals import SIGNAL_NAMES

N_SIGNALS = len(SIGNAL_NAMES)
#: Ring columns (floats), in order; the signals follow them.
RING_COLUMNS = ("score", "satisfaction", "residual", "z", "ts")


def encode(array: np.ndarray) -> dict[str, Any]:
    array = np.ascontiguousarray(array, dtype=np.float64)
    return {"shape": list(array.shape), "b64": base64.b64encode(array.tobytes()).decode("ascii")}


def decode(value: dict[str, Any]) -> np.ndarray:
    return np.frombuffer(base64.b64decode(value["b64"]), dtype=np.float64).reshape(value["shape"]).copy()


@dataclass
class Rows:
    """Columns of some rated turns of one track: the reference, or the latest stream entries."""

    score: np.ndarray
    satisfaction: np.ndarray
    signals: np.ndarray  # (n, N_SIGNALS)
    ts: np.ndarray
    ids: list[list]  # [event_id, conversation_id, turn] of each row
    residual: np.ndarray  # satisfaction - P(satisfied | score); NaN before the calibration exists
    z: np.ndarray  # residual / reference residual SD

    @classmethod
    def empty(cls) -> Rows:
        return cls(np.empty(0), np.empty(0), np.empty((0, N_SIGNALS)), np.empty(0), [], np.empty(0), np.empty(0))

    def __len__(self) -> int:
        return len(self.score)

    def concat(self, other: Rows) -> Rows:
        return Rows(np.concatenate([self.score, other.score]),
                    np.concatenate([self.satisfaction, other.satisfaction]),
                    np.vstack([self.signals, other.signals]), np.concatenate([self.ts, other.ts]),
                    [*self.ids, *other.ids], np.concatenate([self.residual, other.residual]),
                    np.concatenate([self.z, other.z]))

    def slice(self, start: int, stop: int | None = None) -> Rows:
        part = slice(start, stop)
        return Rows(self.score[part], self.satisfaction[part], self.signals[part], self.ts[part],
                    self.ids[part], self.residual[part], self.z[part])

    def to_json(self) -> dict[str, Any]:
        table = np.column_stack([self.score, self.satisfaction, self.residual, self.z, self.ts, self.signals]) \
            if len(self) else np.empty((0, len(RING_COLUMNS) + N_SIGNALS))
        return {"table": encode(table), "ids": [list(row) for row in self.ids]}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> Rows:
        table = decode(value["table"])
        return cls(table[:, 0], table[:, 1], table[:, len(RING_COLUMNS):], table[:, 4],
                   [list(row) for row in value["ids"]],
                   table[:, 2], table[:, 3])


@dataclass
class Moments:
    """Sufficient statistics of two least-squares regressions on the same signal rows: the RM's
    calibrated promise and the users' satisfaction, each on the signals. Additive, so they grow
    with each entry and merge across tracks for a pooled fallback."""

    n: float = 0.0
    x: np.ndarray = field(default_factory=lambda: np.zeros(N_SIGNALS))
    xx: np.ndarray = field(default_factory=lambda: np.zeros((N_SIGNALS, N_SIGNALS)))
    y: np.ndarray = field(default_factory=lambda: np.zeros(2))  # sums of (promise, satisfaction)
    xy: np.ndarray = field(default_factory=lambda: np.zeros((N_SIGNALS, 2)))

    def add(self, signals: np.ndarray, promise: np.ndarray, satisfaction: np.ndarray) -> None:
        targets = np.column_stack([promise, satisfaction])
        self.n += len(signals)
        self.x += signals.sum(axis=0)
        self.xx += signals.T @ signals
        self.y += targets.sum(axis=0)
        self.xy += signals.T @ targets

    def scaled(self, factor: float) -> Moments:
        return Moments(self.n * factor, self.x * factor, self.xx * factor, self.y * factor, self.xy * factor)

    def merged(self, other: Moments) -> Moments:
        return Moments(self.n + other.n, self.x + other.x, self.xx + other.xx, self.y + other.y, self.xy + other.xy)

    def to_json(self) -> dict[str, Any]:
        return {"n": self.n, "x": encode(self.x), "xx": encode(self.xx), "y": encode(self.y), "xy": encode(self.xy)}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> Moments:
        return cls(value["n"], decode(value["x"]), decode(value["xx"]), decode(value["y"]), decode(value["xy"]))


@dataclass
class OpenEpisode:
    """An episode still firing: what the engine needs to extend or resolve it."""

    key: str
    detector: str
    direction: str
    started_at: float
    detections: int
    last_position: int  # stream position of the latest detection (or rejected rank window)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Track:
    """One segment under one reward model (see the module docstring)."""

    identity: str
    reference: Rows = field(default_factory=Rows.empty)  # gathering, then frozen with the calibration
    calibration: Calibration | None = None
    position: int = 0  # stream entries after the reference
    upper: float = 0.0  # CUSUM sums
    lower: float = 0.0
    cusum_n: int = 0
    ring: Rows = field(default_factory=Rows.empty)  # the latest stream entries
    moments: Moments = field(default_factory=Moments)
    open: dict[str, OpenEpisode] = field(default_factory=dict)  # by "detector|direction"
    first_seen: float = 0.0
    last_seen: float = 0.0

    def __repr__(self) -> str:
        return f"Track(identity={self.identity!r}, ...)"

    def to_json(self) -> dict[str, Any]:
        return {"identity": self.identity, "reference": self.reference.to_json(),
                "calibration": None if self.calibration is None else self.calibration.to_params(),
                "position": self.position, "upper": self.upper, "lower": self.lower, "cusum_n": self.cusum_n,
                "ring": self.ring.to_json(), "moments": self.moments.to_json(),
                "open": {name: episode.to_json() for name, episode in self.open.items()},
                "first_seen": self.first_seen, "last_seen": self.last_seen}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> Track:
        return cls(identity=value["identity"], reference=Rows.from_json(value["reference"]),
                   calibration=None if value["calibration"] is None else Calibration.from_params(value["calibration"]),
                   position=value["position"], upper=value["upper"], lower=value["lower"], cusum_n=value["cusum_n"],
                   ring=Rows.from_json(value["ring"]), moments=Moments.from_json(value["moments"]),
                   open={name: OpenEpisode(**episode) for name, episode in value["open"].items()},
                   first_seen=value["first_seen"], last_seen=value["last_seen"])


@dataclass
class SegmentState:
    segment: str
    tracks: dict[str, Track] = field(default_factory=dict)
    current: str | None = None  # identity of the latest entry
    episodes: dict[str, int] = field(default_factory=dict)  # episodes numbered per "detector|direction"
    labelled: int = 0  # entries so far (every track)
    changes: list[dict[str, Any]] = field(default_factory=list)  # reward-model identity changes, oldest first

    @property
    def track(self) -> Track | None:
        """The track of the current reward model."""
        return None if self.current is None else self.tracks.get(self.current)

    def to_json(self) -> dict[str, Any]:
        return {"segment": self.segment, "tracks": {name: track.to_json() for name, track in self.tracks.items()},
                "current": self.current, "episodes": dict(self.episodes), "labelled": self.labelled,
                "changes": list(self.changes)}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> SegmentState:
        return cls(value["segment"], {name: Track.from_json(track) for name, track in value["tracks"].items()},
                   value["current"], dict(value["episodes"]), value["labelled"], list(value["changes"]))
