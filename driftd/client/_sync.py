"""DriftClient: the blocking Python client of a driftd server."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import grpc

from driftd import types
from driftd.client import _common as common
from driftd.client._common import PointLike, Time, UpsertAck

T = TypeVar("T")


class DriftClient:
    """A blocking client over one gRPC channel; thread-safe, use as a context manager.

    Every method raises the :mod:`driftd.errors` class of the failed RPC's status
    (``NotFound``, ``InvalidArgument``, ...) with ``reason``, ``metadata`` and
    ``field_violations`` from the server and the ``grpc.RpcError`` as
    ``__cause__``; codes driftd does not define give a ``DriftdError`` whose
    ``code`` names the status. Collection names may be ids (``"sotu"``) or
    resource names (``"collections/sotu"``). Times are aware datetimes or
    RFC 3339 strings (naive means UTC); vectors are float32 numpy arrays.

    Args:
        target: ``host:port`` of the server.
        timeout: deadline of each unary RPC, in seconds (None: no deadline).
            Streams (trajectory, simulations, stream_upsert) have no deadline;
            they stop when their iterator is exhausted or closed.
        options: extra gRPC channel options, overriding the client's defaults
            (64 MiB message limits).
        credentials: ``grpc.ChannelCredentials`` for TLS; None: plaintext.
    """

    def __init__(
        self,
        target: str = common.DEFAULT_TARGET,
        *,
        timeout: float | None = 30.0,
        options: Iterable[tuple[str, Any]] | Mapping[str, Any] | None = None,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        opts = common.channel_options(options)
        self._channel = (
            grpc.secure_channel(target, credentials, options=opts)
            if credentials is not None
            else grpc.insecure_channel(target, options=opts)
        )
        self._stubs = common.Stubs(self._channel)
        self._timeout = timeout
        self.target = target

    def close(self) -> None:
        """Closes the channel; RPCs in flight are cancelled."""
        self._channel.close()

    def __enter__(self) -> DriftClient:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _unary(self, call: common.Call[T]) -> T:
        with common.translate_errors(call.index_offset):
            response = call.bind(self._stubs)(call.request, timeout=self._timeout)
        return call.parse(response)

    @staticmethod
    def _stream(responses, read: Callable[[Any], Iterable[T]]) -> Iterator[T]:
        # Cancelling on the way out stops the server's work when the caller
        # stops iterating early; after a normal end it is a no-op.
        try:
            with common.translate_errors():
                for response in responses:
                    yield from read(response)
        finally:
            responses.cancel()

    # --- collections ---------------------------------------------------------

    def create_collection(
        self,
        name: str,
        *,
        dim: int | None = None,
        distance: str = "cosine",
        embed_model: str | None = None,
    ) -> types.CollectionInfo:
        """Creates a collection.

        Args:
            name: id (3-63 chars of ``[A-Za-z0-9._-]``) or ``"collections/{id}"``.
            dim: vector dimension; None takes the embed model's.
            distance: ``"cosine"``, ``"l2"`` or ``"ip"``.
            embed_model: fastembed model that embeds texts (e.g.
                ``"all-MiniLM-L6-v2"``); None: texts are refused, send vectors.

        Raises:
            AlreadyExists: the id is taken.
            InvalidArgument: bad id, dimension, distance or unknown model.
        """
        return self._unary(common.create_collection(name, dim, distance, embed_model))

    def get_collection(self, name: str) -> types.CollectionInfo:
        """The collection's settings and live counts. Raises NotFound."""
        return self._unary(common.get_collection(name))

    def list_collections(self, *, page_size: int = 100) -> Iterator[types.CollectionInfo]:
        """Every collection in name order, fetching ``page_size`` per RPC."""
        token = ""
        while True:
            infos, token = self._unary(common.list_collections_page(page_size, token))
            yield from infos
            if not token:
                return

    def delete_collection(self, name: str) -> None:
        """Deletes a collection and its points. Raises NotFound."""
        self._unary(common.delete_collection(name))

    def attach_collection(
        self, chroma_collection: str, *, time_key: str, series_key: str = "", embed_model: str = ""
    ) -> types.CollectionInfo:
        """Adopts an existing Chroma collection of the server's store, without copying.

        Args:
            chroma_collection: the Chroma collection's name (becomes the id).
            time_key: metadata key holding each record's time (epoch seconds or RFC 3339).
            series_key: metadata key holding each record's series; "" for one series.
            embed_model: model of the stored vectors, if known; "" refuses texts.
        """
        return self._unary(
            common.attach_collection(chroma_collection, time_key, series_key, embed_model)
        )

    # --- points ----------------------------------------------------------------

    def upsert(
        self, name: str, points: Iterable[PointLike], *, batch_size: int = 1000
    ) -> types.UpsertResult:
        """Writes points with one UpsertPoints RPC per ``batch_size`` points.

        ``points`` are :class:`driftd.types.Point` or dicts ``{id, timestamp, text |
        vector, series?, payload?}``. Every row is parsed before anything is sent;
        each batch is then validated whole by the server and written durably.

        Returns:
            The batches' summed counts and the collection's final version.

        Raises:
            InvalidArgument: malformed rows (``points[i]`` field paths, i counted
                over the whole input), or a batch the server rejected; the batches
                before it are written (``metadata["batch_start"]`` says where the
                rejected batch began).
            FailedPrecondition: texts for a collection without an embed model.
        """
        result = None
        for call in common.upsert_batches(name, points, batch_size):
            result = common.add_results(result, self._unary(call))
        assert result is not None  # upsert_batches yields at least one call
        return result

    def stream_upsert(
        self,
        name: str,
        points: Iterable[PointLike],
        *,
        batch_size: int = 500,
        start_sequence: int = 0,
    ) -> Iterator[UpsertAck]:
        """Streams points in batches over StreamUpsertPoints, yielding each batch's ack.

        ``points`` is consumed lazily (it may be a generator over a large file);
        batches are numbered from ``start_sequence``, so after a broken stream
        resume with the sequence after the last ack. The server reads a batch
        only after acknowledging the previous one (backpressure). Invalid points
        do not fail the stream: the server skips them and lists them in the ack.

        Raises:
            InvalidArgument: a malformed row (``points[i]``, counted from the start
                of this stream), raised after the acks of the batches before it.
            NotFound: the collection does not exist.
        """
        requests = common.StreamUpsertRequests(name, points, batch_size, start_sequence)
        yield from self._stream(
            self._stubs.points.StreamUpsertPoints(iter(requests)), common.read_ack
        )
        requests.raise_error()

    def get_points(
        self, name: str, ids: Sequence[str], *, include_vectors: bool = False
    ) -> tuple[list[types.Point], list[str]]:
        """Points by id: ``(found, in request order; missing ids)``."""
        return self._unary(common.get_points(name, ids, include_vectors))

    def delete_points(self, name: str, ids: Sequence[str]) -> int:
        """Deletes points by id (unknown ids are ignored); returns how many existed."""
        return self._unary(common.delete_points(name, ids))

    def trajectory(
        self,
        name: str,
        *,
        start: Time = None,
        end: Time = None,
        series: str = "",
        include_vectors: bool = False,
    ) -> Iterator[types.Point]:
        """The points of ``[start, end)`` in time order (ties in insertion order),
        streamed; ``series`` "" means all. Closing the iterator cancels the RPC."""
        request = common.trajectory_request(
            name, start=start, end=end, series=series, include_vectors=include_vectors
        )
        return self._stream(self._stubs.points.GetTrajectory(request), common.read_trajectory)

    def search(
        self,
        name: str,
        *,
        vector=None,
        text: str | None = None,
        top_k: int = 10,
        start: Time = None,
        end: Time = None,
        series: str = "",
        payload_filter: Mapping[str, str | float | bool] | None = None,
        include_vectors: bool = False,
    ) -> list[types.ScoredPoint]:
        """The ``top_k`` nearest points to a ``vector`` (d,) or a ``text``, nearest
        first, within ``[start, end)``, ``series`` and the payload equalities of
        ``payload_filter``.

        Raises:
            InvalidArgument: not exactly one of vector/text, or a bad dimension/top_k.
        """
        return self._unary(
            common.search(
                name,
                vector=vector,
                text=text,
                top_k=top_k,
                start=start,
                end=end,
                series=series,
                payload_filter=payload_filter,
                include_vectors=include_vectors,
            )
        )

    # --- flow ------------------------------------------------------------------

    def flow_vector(
        self, name: str, *, vector=None, text: str | None = None, point_id: str | None = None
    ) -> types.FlowProbe:
        """The flow's local velocity (units per second) at exactly one of a
        vector, a text or a stored point.

        Raises:
            FailedPrecondition: too few points for a flow (NOT_ENOUGH_POINTS,
                ``metadata["required"]``).
        """
        return self._unary(common.probe_flow(name, vector=vector, text=text, point_id=point_id))

    def simulate_stream(
        self,
        name: str,
        *,
        vector=None,
        text: str | None = None,
        point_id: str | None = None,
        steps: int = 100,
        dt_seconds: float | None = None,
        paths: int = 1,
        stop_outside_support: bool = False,
        include_vectors: bool = True,
        seed: int = 0,
    ) -> Iterator[types.SimulationStep]:
        """Follows the flow from a start (exactly one of vector/text/point_id),
        yielding each step of each path as the server computes it.

        Args:
            steps: steps per path (server limit 10,000 by default).
            dt_seconds: simulated seconds per step; None: the timeline's median gap.
            paths: paths; those after the first start jittered by the local noise.
            stop_outside_support: end a path when it leaves the data's support.
            include_vectors: fill each step's ``position`` (d,).
            seed: seed of the jitter; the same seed gives the same paths.

        Closing the iterator cancels the RPC and stops the server's work.
        """
        request = common.simulate_request(
            name,
            vector=vector,
            text=text,
            point_id=point_id,
            steps=steps,
            dt_seconds=dt_seconds,
            paths=paths,
            stop_outside_support=stop_outside_support,
            include_vectors=include_vectors,
            seed=seed,
        )
        return self._stream(self._stubs.flow.SimulatePaths(request), common.read_step)

    def flow_simulate(
        self,
        name: str,
        *,
        vector=None,
        text: str | None = None,
        point_id: str | None = None,
        steps: int = 100,
        dt_seconds: float | None = None,
        paths: int = 1,
        stop_outside_support: bool = False,
        include_vectors: bool = True,
        seed: int = 0,
    ) -> list[types.SimulationStep]:
        """All steps of :meth:`simulate_stream` as a list (path-major as streamed)."""
        return list(
            self.simulate_stream(
                name,
                vector=vector,
                text=text,
                point_id=point_id,
                steps=steps,
                dt_seconds=dt_seconds,
                paths=paths,
                stop_outside_support=stop_outside_support,
                include_vectors=include_vectors,
                seed=seed,
            )
        )

    def flow_attractors(
        self,
        name: str,
        *,
        seeds: int = 64,
        representatives: int = 3,
        include_vectors: bool = False,
        seed: int = 0,
    ) -> types.AttractorSet:
        """The flow's fixed points, largest basin first, each with its
        ``representatives`` nearest stored points; deterministic under ``seed``."""
        return self._unary(
            common.find_attractors(
                name,
                seeds=seeds,
                representatives=representatives,
                include_vectors=include_vectors,
                seed=seed,
            )
        )

    def flow_chapters(
        self,
        name: str,
        *,
        series: str = "",
        start: Time = None,
        end: Time = None,
        min_size: int = 5,
        penalty: float | None = None,
        representatives: int = 3,
    ) -> types.ChapterSet:
        """The timeline's chapters (regimes) in time order, by change-point detection.

        Args:
            series: only this series; "" means all points in time order.
            min_size: minimum points per chapter.
            penalty: change-point penalty (higher: fewer chapters); None lets the
                server pick one from a robust noise estimate.
        """
        return self._unary(
            common.detect_chapters(
                name,
                series=series,
                start=start,
                end=end,
                min_size=min_size,
                penalty=penalty,
                representatives=representatives,
            )
        )

    # --- health ----------------------------------------------------------------

    def health(self, service: str = "") -> str:
        """The server's ``grpc.health.v1`` status name, e.g. ``"SERVING"`` or
        ``"NOT_SERVING"``; ``service`` "" is the whole server.

        Raises:
            ImportError: grpcio-health-checking is not installed.
            Unavailable: the server cannot be reached.
        """
        return self._unary(common.health_check(service))
