"""Streaming RPCs: requests and readers, the batching upsert stream, and the
resuming stream writer's state."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import AsyncIterable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta

import grpc

from driftd import convert, types
from driftd.client._common.calls import _flow_start
from driftd.client._common.errors import from_rpc_error
from driftd.client._common.options import PointLike, RetryPolicy, Time
from driftd.client._common.parse import _check_batch_size, _time_range, parse_point, parse_points
from driftd.errors import (
    Internal,
    Unavailable,
)
from driftd.v1 import (
    flow_pb2,
    point_pb2,
)


@dataclass(frozen=True)
class UpsertAck:
    """The server's acknowledgement of one streamed batch, sent once it is durable.

    ``errors`` index the batch's points (0-based) and name an ErrorReason;
    ``version`` is the collection's version after the batch.
    """

    sequence: int
    accepted: int
    rejected: int
    errors: tuple[types.PointError, ...]
    version: int


def read_ack(r: point_pb2.StreamUpsertPointsResponse) -> tuple[UpsertAck]:
    return (
        UpsertAck(
            sequence=r.sequence,
            accepted=r.accepted_count,
            rejected=r.rejected_count,
            errors=tuple(convert.point_error_from_proto(e) for e in r.errors),
            version=r.collection_version,
        ),
    )


def read_trajectory(r: point_pb2.GetTrajectoryResponse) -> list[types.Point]:
    return [convert.point_from_proto(p) for p in r.points]


def read_step(r: flow_pb2.SimulatePathsResponse) -> tuple[types.SimulationStep]:
    return (convert.step_from_proto(r),)


def trajectory_request(
    name: str,
    *,
    start: Time,
    end: Time,
    series: str,
    include_vectors: bool,
    payload_filter: Mapping | None = None,
    payload_conditions: Sequence[types.PayloadCondition] = (),
) -> point_pb2.GetTrajectoryRequest:
    request = point_pb2.GetTrajectoryRequest(
        parent=convert.collection_name(name),
        time_range=_time_range(start, end),
        series=series,
        include_vectors=include_vectors,
        payload_conditions=convert.conditions_to_proto(payload_conditions),
    )
    if payload_filter:
        request.payload_filter.CopyFrom(convert.dict_to_struct(payload_filter))
    return request


def simulate_request(
    name: str,
    *,
    vector,
    text: str | None,
    point_id: str | None,
    steps: int,
    dt_seconds: float | None,
    paths: int,
    stop_outside_support: bool,
    include_vectors: bool,
    seed: int,
    band_coverage: float,
) -> flow_pb2.SimulatePathsRequest:
    request = flow_pb2.SimulatePathsRequest(
        parent=convert.collection_name(name),
        start=_flow_start(vector, text, point_id),
        steps=steps,
        paths=paths,
        stop_outside_support=stop_outside_support,
        include_vectors=include_vectors,
        seed=seed,
        band_coverage=band_coverage,
    )
    if dt_seconds is not None:
        request.step_duration.FromTimedelta(timedelta(seconds=dt_seconds))
    return request


@dataclass
class StreamUpsertRequests:
    """The requests of one StreamUpsertPoints stream: ``points`` parsed and cut
    into batches of ``batch_size``, numbered from ``start_sequence``.

    gRPC consumes request iterators on its own thread (or task) and turns an
    exception there into a bare CANCELLED, so a bad row or a failing ``points``
    iterator instead ends the stream cleanly (batches already sent are still
    acknowledged) and is kept in ``error`` for the reader to raise afterwards.
    Field paths of a bad row count points from the start of the stream.
    """

    name: str
    points: Iterable[PointLike] | AsyncIterable[PointLike]
    batch_size: int
    start_sequence: int = 0
    error: Exception | None = field(default=None, init=False)
    _sent: int = field(default=0, init=False)
    _sequence: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        _check_batch_size(self.batch_size)
        self._sequence = self.start_sequence

    def __iter__(self) -> Iterator[point_pb2.StreamUpsertPointsRequest]:
        batch: list[PointLike] = []
        try:
            for raw in self.points:  # type: ignore[union-attr]
                batch.append(raw)
                if len(batch) == self.batch_size:
                    yield self._request(batch)
                    batch = []
            if batch:
                yield self._request(batch)
        except Exception as exc:
            self.error = exc

    async def __aiter__(self):
        """As ``__iter__``; ``points`` may be a sync or an async iterable."""
        if not isinstance(self.points, AsyncIterable):
            for request in self:
                yield request
            return
        batch: list[PointLike] = []
        try:
            async for raw in self.points:
                batch.append(raw)
                if len(batch) == self.batch_size:
                    yield self._request(batch)
                    batch = []
            if batch:
                yield self._request(batch)
        except Exception as exc:
            self.error = exc

    def _request(self, batch: list[PointLike]) -> point_pb2.StreamUpsertPointsRequest:
        parsed = parse_points(batch, first_index=self._sent)
        request = point_pb2.StreamUpsertPointsRequest(
            parent=convert.collection_name(self.name),
            sequence=self._sequence,
            points=[convert.point_to_proto(p) for p in parsed],
        )
        self._sent += len(batch)
        self._sequence += 1
        return request

    def raise_error(self) -> None:
        """Raises what ended the requests early, if anything did."""
        if self.error is not None:
            raise self.error


# --- the resuming stream writer ------------------------------------------------

#: Batches a writer sends ahead of its acks: the server reads a batch only after
#: acknowledging the previous one, so two keep it busy; more would only hold more
#: points in memory.
UNACKED_BATCHES = 2


@dataclass
class WriteProgress:
    """What a stream writer has done so far, updated as acks arrive.

    Point indexes count the points the writer took, in order (a malformed row
    that ``add`` refused is not one of them). Batches are acknowledged in order,
    so the first ``acked`` points are durable or rejected: after a writer failed,
    resume with the points from index ``acked`` on.

    Attributes:
        added: points taken by ``add``/``extend``.
        acked: points of acknowledged batches (accepted + rejected).
        accepted: points written.
        rejected: points refused by the server; why in ``errors``.
        errors: the refused points, ``index`` counted as above.
        batches: acknowledged batches.
        reconnects: times the stream was re-opened after UNAVAILABLE.
        version: the collection's version after the last acknowledged batch.
    """

    added: int = 0
    acked: int = 0
    accepted: int = 0
    rejected: int = 0
    errors: list[types.PointError] = field(default_factory=list)
    batches: int = 0
    reconnects: int = 0
    version: int = 0


class WriterState:
    """The I/O-free part of the stream writers (sync and asyncio): batching, the
    batches not yet acknowledged, ack bookkeeping and reconnect decisions.

    A re-sent batch keeps its sequence number, so a re-opened stream starts at the
    first unacknowledged batch and its sequence still strictly increases. The
    writer reconnects, with the backoff of ``retries``, for up to ``timeout``
    seconds after the stream first broke without an ack since (None: no limit);
    as for unary calls, that is the budget for a server restart.
    """

    def __init__(
        self,
        name: str,
        batch_size: int,
        retries: RetryPolicy | None,
        timeout: float | None,
        on_ack: Callable[[UpsertAck], object] | None,
    ) -> None:
        _check_batch_size(batch_size)
        self.parent = convert.collection_name(name)
        self.batch_size = batch_size
        self.retries = retries
        self.timeout = timeout
        self.on_ack = on_ack
        self.progress = WriteProgress()
        #: (index of the batch's first point, the batch), oldest first.
        self.unacked: deque[tuple[int, point_pb2.StreamUpsertPointsRequest]] = deque()
        self._points: list[point_pb2.Point] = []
        self._sequence = 0
        self._failures = 0  # since the last ack
        self._failing_since: float | None = None

    def add(self, raw: PointLike) -> point_pb2.StreamUpsertPointsRequest | None:
        """Parses one point; returns the batch it completes, to be sent.

        Raises:
            InvalidArgument: a malformed point (``points[i]``, i the index it would
                have had); it is not taken.
        """
        point = parse_point(raw, self.progress.added)
        self._points.append(convert.point_to_proto(point))
        self.progress.added += 1
        return self.cut() if len(self._points) == self.batch_size else None

    def cut(self) -> point_pb2.StreamUpsertPointsRequest | None:
        """The points not yet in a batch as the next batch, kept until it is
        acknowledged; None when there are none."""
        if not self._points:
            return None
        batch = point_pb2.StreamUpsertPointsRequest(
            parent=self.parent, sequence=self._sequence, points=self._points
        )
        self.unacked.append((self.progress.added - len(self._points), batch))
        self._points = []
        self._sequence += 1
        return batch

    @property
    def full(self) -> bool:
        """Whether the writer must wait for an ack before it goes on."""
        return len(self.unacked) > UNACKED_BATCHES

    def ack(self, response: point_pb2.StreamUpsertPointsResponse) -> None:
        """Records the ack of the oldest unacknowledged batch, then calls ``on_ack``.

        Raises:
            Internal: the ack is not for that batch.
        """
        (ack,) = read_ack(response)
        expected = self.unacked[0][1].sequence if self.unacked else None
        if ack.sequence != expected:
            raise Internal(
                f"the server acknowledged batch {ack.sequence}, expected {expected}",
                metadata={"sequence": ack.sequence},
            )
        first, batch = self.unacked.popleft()
        progress = self.progress
        progress.acked += len(batch.points)
        progress.accepted += ack.accepted
        progress.rejected += ack.rejected
        progress.errors.extend(replace(e, index=first + e.index) for e in ack.errors)
        progress.batches += 1
        progress.version = ack.version
        self._failures, self._failing_since = 0, None
        if self.on_ack is not None:
            self.on_ack(ack)

    def ended_early(self) -> Internal:
        """The error for a stream the server ended before acknowledging every batch."""
        return Internal(
            f"the server ended the stream with {len(self.unacked)} batch(es) unacknowledged"
        )

    def retry_delay(self, err: grpc.RpcError, *, send_failed: bool = False) -> float:
        """Seconds to wait before re-opening a stream that failed with ``err``.

        ``send_failed``: a write on this stream failed in the transport. grpc.aio
        then ends the call with a client-side INTERNAL ("Internal error from Core")
        rather than UNAVAILABLE, although the connection is what broke.

        Raises:
            DriftdError: the driftd error of ``err`` (:func:`from_rpc_error`) unless
                it is UNAVAILABLE, retries are on and the reconnect budget is left.
        """
        if self._failing_since is None:
            self._failing_since = time.monotonic()
        self._failures += 1
        left = self.time_left()
        code = err.code() if callable(getattr(err, "code", None)) else None
        unavailable = code == grpc.StatusCode.UNAVAILABLE or (
            send_failed and code == grpc.StatusCode.INTERNAL
        )
        if not unavailable or self.retries is None or (left is not None and left <= 0):
            raise from_rpc_error(err) from err
        self.progress.reconnects += 1
        delay = self.retries.backoff(self._failures)
        return delay if left is None else min(delay, left)

    def time_left(self) -> float | None:
        """Seconds left of the reconnect budget; None when unlimited."""
        if self.timeout is None or self._failing_since is None:
            return self.timeout
        return self.timeout - (time.monotonic() - self._failing_since)

    def not_back(self) -> Unavailable:
        """The error for a server that did not accept connections within the budget."""
        return Unavailable(
            f"the server did not come back within {self.timeout} s; "
            f"{len(self.unacked)} batch(es) unacknowledged",
            metadata={"acked": self.progress.acked},
        )
