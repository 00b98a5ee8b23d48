"""DriftClient: the blocking Python client of a driftd server."""

from __future__ import annotations

import contextlib
import queue
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import grpc

from driftd import types
from driftd.client import _common as common
from driftd.client._common import PointLike, RetryPolicy, Time, UpsertAck, WriteProgress
from driftd.routing.types import BranchContext, BranchInfo, FactsResult, RouteResult
from driftd.v1 import behavior_pb2, collection_pb2, monitor_pb2, point_pb2

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
        target: ``host:port`` of the server; ``http://host:port`` (plaintext) and
            ``https://host:port`` (TLS with the system's roots) are accepted too.
        timeout: deadline of each unary RPC, in seconds (None: no deadline),
            retries and waits for the server included. Streams (trajectory,
            simulations, stream_upsert, writer) have no deadline; they stop when
            their iterator is exhausted or closed.
        retries: how reads and idempotent writes ride out a restarting server
            (:class:`RetryPolicy`: they wait for it within their deadline and are
            re-sent after UNAVAILABLE), and how :meth:`writer` reconnects. None:
            every call fails at once with Unavailable when the server is down.
        options: extra gRPC channel options, overriding the client's defaults
            (64 MiB message limits, the retry policy's service config).
        credentials: ``grpc.ChannelCredentials``, for full control of TLS;
            None: plaintext unless ``tls`` is given.
        api_key: sent as ``authorization: Bearer <key>`` on every RPC; needs
            ``tls`` unless the target is loopback.
        tls: :class:`TLS` options (CA, client certificate for mTLS), or True for
            TLS with the system's roots; None/False: plaintext.

    Raises:
        InvalidArgument: an API key for a non-loopback target without TLS, or
            both ``tls`` and ``credentials``.
        OSError: a TLS file cannot be read.
    """

    def __init__(
        self,
        target: str = common.DEFAULT_TARGET,
        *,
        timeout: float | None = 30.0,
        retries: RetryPolicy | None = common.DEFAULT_RETRIES,
        options: Iterable[tuple[str, Any]] | Mapping[str, Any] | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        api_key: str | None = None,
        tls: common.TLS | bool | None = None,
    ) -> None:
        target, credentials, security_options, metadata = common.channel_security(
            target, api_key=api_key, tls=tls, credentials=credentials
        )
        opts = common.channel_options({**security_options, **dict(options or ())}, retries)
        self._channel = (
            grpc.secure_channel(target, credentials, options=opts)
            if credentials is not None
            else grpc.insecure_channel(target, options=opts)
        )
        self._stubs = common.Stubs(self._channel, metadata)
        self._timeout = timeout
        self._retries = retries
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
            name: id (3-512 chars of ``[A-Za-z0-9._-]``) or ``"collections/{id}"``.
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

    def export_collection(
        self, name: str, *, chunk_size: int = 0, timeout: float | None = None
    ) -> Iterator[collection_pb2.ExportCollectionResponse]:
        """A snapshot of collection ``name`` for a backup, streamed as the server
        sends it: first the collection and its drift rules, then chunks of
        ``chunk_size`` points (0: the server's 500) with vectors. ``timeout``
        bounds the whole stream (None: no deadline). Closing the iterator cancels
        the RPC. :mod:`driftd.backup` writes it to a file."""
        responses = self._stubs.collections.ExportCollection(
            common.export_request(name, chunk_size), timeout=timeout
        )
        return self._stream(responses, lambda response: (response,))

    def import_collection(
        self,
        requests: Iterable[collection_pb2.ImportCollectionRequest],
        *,
        timeout: float | None = None,
    ) -> collection_pb2.ImportCollectionResponse:
        """Creates a collection from ``requests`` (the first names it and carries
        its settings and drift rules; any may carry points): all or nothing.
        ``timeout`` bounds the whole stream (None: no deadline).

        Raises:
            AlreadyExists: the collection id is taken.
            InvalidArgument: bad settings, drift rules or points (nothing is kept).
        """
        with common.translate_errors():
            return self._stubs.collections.ImportCollection(iter(requests), timeout=timeout)

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
        resume with the sequence after the last ack (:meth:`writer` does that
        by itself). The server reads a few batches ahead of the one it
        writes, then stops reading (backpressure). Invalid points do not fail the stream: the
        server skips them and lists them in the ack.

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

    def writer(
        self,
        name: str,
        *,
        batch_size: int = 500,
        on_ack: Callable[[UpsertAck], object] | None = None,
    ) -> UpsertWriter:
        """A batching writer over one StreamUpsertPoints stream that survives
        server restarts; use it as a context manager::

            with client.writer("notes") as w:
                w.extend(rows)          # or w.add(row), any number of times
            print(w.progress.accepted, w.progress.errors)

        Points are batched ``batch_size`` at a time and sent while earlier
        batches are being written; batches stay in memory until acknowledged
        (durable), at most three of them, so ``add`` waits when the server is
        behind. When the stream breaks with UNAVAILABLE (a server restart) the
        writer reconnects, with the backoff of the client's retry policy and for
        up to the client's ``timeout``, and re-sends from the first
        unacknowledged batch: each point ends up written once, by id. Points the
        server refuses (wrong dimension, ...) do not stop the writer; they are
        listed in ``progress.errors``. ``on_ack`` is called with each batch's ack
        (error indexes within the batch).

        Raises:
            InvalidArgument: batch_size < 1.
        """
        state = common.WriterState(name, batch_size, self._retries, self._timeout, on_ack)
        return UpsertWriter(self._stubs, state)

    def get_points(
        self, name: str, ids: Sequence[str], *, include_vectors: bool = False
    ) -> tuple[list[types.Point], list[str]]:
        """Points by id: ``(found, in request order; missing ids)``."""
        return self._unary(common.get_points(name, ids, include_vectors))

    def delete_points(self, name: str, ids: Sequence[str]) -> int:
        """Deletes points by id (unknown ids are ignored); returns how many existed.
        Retried after UNAVAILABLE, so after a lost answer the count can miss
        points the first attempt deleted."""
        return self._unary(common.delete_points(name, ids))

    def trajectory(
        self,
        name: str,
        *,
        start: Time = None,
        end: Time = None,
        series: str = "",
        include_vectors: bool = False,
        payload_filter: Mapping[str, str | float | bool] | None = None,
        payload_conditions: Sequence[types.PayloadCondition] = (),
    ) -> Iterator[types.Point]:
        """The points of ``[start, end)`` in time order (ties in insertion order),
        streamed; ``series`` "" means all. ``payload_filter`` (equalities) and
        ``payload_conditions`` (:class:`driftd.types.PayloadCondition`: ranges,
        sets) keep only the points matching all of them. Closing the iterator
        cancels the RPC.

        Raises:
            InvalidArgument: INVALID_FILTER (a reserved key such as ``driftd:*``
                or ``$or``, a non-scalar value, a malformed condition).
        """
        request = common.trajectory_request(
            name,
            start=start,
            end=end,
            series=series,
            include_vectors=include_vectors,
            payload_filter=payload_filter,
            payload_conditions=payload_conditions,
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
        payload_conditions: Sequence[types.PayloadCondition] = (),
    ) -> list[types.ScoredPoint]:
        """The ``top_k`` nearest points to a ``vector`` (d,) or a ``text``, nearest
        first, within ``[start, end)``, ``series``, the payload equalities of
        ``payload_filter`` and every :class:`driftd.types.PayloadCondition` of
        ``payload_conditions``, e.g. ``PayloadCondition("score", gte=0.5)`` or
        ``PayloadCondition("lang", any_of=("en", "de"))``.

        Raises:
            InvalidArgument: not exactly one of vector/text, or a bad dimension/top_k;
                INVALID_FILTER for a bad filter (see :meth:`trajectory`).
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
                payload_conditions=payload_conditions,
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
        band_coverage: float = 0.9,
    ) -> Iterator[types.SimulationStep]:
        """Follows the flow from a start (exactly one of vector/text/point_id),
        yielding each step of each path as the server computes it.

        Args:
            steps: steps per path (server limit 10,000 by default).
            dt_seconds: simulated seconds per step; None: the timeline's median gap.
            paths: paths; those after the first start jittered by the local noise.
            stop_outside_support: end a path when it leaves the data's support.
            include_vectors: fill each step's ``position`` and ``ensemble_position`` (d,).
            seed: seed of the jitter; the same seed gives the same paths.
            band_coverage: share (0-1) of the server's bootstrap refits that each
                step's ``band_radius`` (embedding units) around ``ensemble_position``
                holds.

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
            band_coverage=band_coverage,
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
        band_coverage: float = 0.9,
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
                band_coverage=band_coverage,
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
        bootstrap: int | None = None,
    ) -> types.AttractorSet:
        """The flow's fixed points, largest basin first, each with its
        ``representatives`` nearest stored points; deterministic under ``seed``.

        ``bootstrap`` refits (2 to the server limit, 64 by default; None: the
        server's ensemble, 8 by default) measure each one's ``reproducibility``;
        more than the server's ensemble costs a rebuild (seconds at 100k points).
        """
        return self._unary(
            common.find_attractors(
                name,
                seeds=seeds,
                representatives=representatives,
                include_vectors=include_vectors,
                seed=seed,
                bootstrap=bootstrap,
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
        method: str = "offline",
    ) -> types.ChapterSet:
        """The timeline's chapters (regimes) in time order, by change-point detection.

        Args:
            series: only this series; "" means all points in time order (with
                ``method="online"``: allowed only when the collection has one series).
            min_size: minimum points per chapter.
            penalty: change-point penalty (higher: fewer chapters); None lets the
                server pick one from a robust noise estimate. Offline only.
            method: "offline" (exact PELT, recomputed; links chapters to attractors)
                or "online" (the server's running BOCPD detector of the series, no
                refit; ``attractor_id`` empty).

        Raises:
            InvalidArgument: unknown method; online without a series on a collection
                of several series; penalty with online; limits.
            FailedPrecondition(NOT_ENOUGH_POINTS): fewer than 2 min_size points.
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
                method=method,
            )
        )

    # --- monitoring --------------------------------------------------------------
    # Results are the driftd.v1 messages (driftd.v1.monitor_pb2, behavior_pb2).

    def compare_windows(
        self,
        name: str,
        window_a: tuple[Time, Time],
        window_b: tuple[Time, Time],
        *,
        series: str = "",
        series_b: str | None = None,
        permutations: int = 500,
        alpha: float = 0.01,
        max_points_per_window: int = 2000,
        seed: int = 0,
    ) -> monitor_pb2.CompareWindowsResponse:
        """Tests whether the points of ``window_b`` = (start, end) are distributed like
        those of ``window_a`` (None bounds are open): MMD² with a permutation
        p-value, per-component KS tests with Benjamini-Hochberg, centroid shift,
        a domain classifier's ROC AUC and a verdict (``.report``).

        Args:
            series: only this series in both windows ("" = all); ``series_b``
                overrides it for window B.
            alpha: significance level of the verdict and FDR of the KS tests.
            seed: the same seed gives the same report.

        Raises:
            FailedPrecondition: a window has fewer than 10 points (NOT_ENOUGH_POINTS,
                ``metadata["window"]``).
        """
        return self._unary(
            common.compare_windows(
                name,
                window_a,
                window_b,
                series=series,
                series_b=series_b,
                permutations=permutations,
                alpha=alpha,
                max_points_per_window=max_points_per_window,
                seed=seed,
            )
        )

    def embedding_health(
        self,
        name: str,
        *,
        start: Time = None,
        end: Time = None,
        series: str = "",
        max_outliers: int = 10,
        duplicate_similarity: float = 0.98,
        max_points: int = 5000,
        seed: int = 0,
    ) -> monitor_pb2.EmbeddingHealthResponse:
        """Outliers, near-duplicate rate, norms, effective rank and embed-model
        mixing of the collection's vectors in ``[start, end)`` and ``series``."""
        return self._unary(
            common.embedding_health(
                name,
                start=start,
                end=end,
                series=series,
                max_outliers=max_outliers,
                duplicate_similarity=duplicate_similarity,
                max_points=max_points,
                seed=seed,
            )
        )

    def watch(
        self, name: str, *, after_sequence: int = 0, event_types: Sequence[str] = ()
    ) -> Iterator[monitor_pb2.WatchCollectionResponse]:
        """The collection's events as they happen (no deadline; close the iterator
        to stop). ``event_types`` filters ("points_upserted", "points_deleted",
        "chapter_detected", "drift_alarm"); ``after_sequence`` resumes after the
        last event seen (0: from now).

        Raises:
            ResourceExhausted: the watcher fell too far behind (WATCHER_TOO_SLOW);
                resume from the last ``sequence`` seen.
            FailedPrecondition: the resume point is no longer buffered (EVENTS_EXPIRED).
        """
        request = common.watch_request(name, after_sequence=after_sequence, event_types=event_types)
        return self._stream(self._stubs.monitor.WatchCollection(request), common.read_event)

    def create_drift_rule(
        self,
        name: str,
        *,
        window_seconds: float,
        rule_id: str = "",
        p_value_threshold: float = 0.01,
        series: str = "",
        min_points: int = 20,
    ) -> monitor_pb2.DriftRule:
        """Registers a standing drift test: whenever the timeline enters a new
        window of ``window_seconds`` (aligned to the epoch), the last two complete
        windows are compared and a ``drift_alarm`` event is published when the
        MMD² p-value is at most ``p_value_threshold``."""
        return self._unary(
            common.create_drift_rule(
                name,
                window_seconds=window_seconds,
                rule_id=rule_id,
                p_value_threshold=p_value_threshold,
                series=series,
                min_points=min_points,
            )
        )

    def get_drift_rule(self, name: str, rule_id: str) -> monitor_pb2.DriftRule:
        """A drift rule with its last evaluation. Raises NotFound."""
        return self._unary(common.get_drift_rule(name, rule_id))

    def list_drift_rules(
        self, name: str, *, page_size: int = 100
    ) -> Iterator[monitor_pb2.DriftRule]:
        """The collection's drift rules in id order, ``page_size`` per RPC."""
        token = ""
        while True:
            rules, token = self._unary(common.list_drift_rules_page(name, page_size, token))
            yield from rules
            if not token:
                return

    def delete_drift_rule(self, name: str, rule_id: str) -> None:
        """Deletes a drift rule. Raises NotFound."""
        self._unary(common.delete_drift_rule(name, rule_id))

    # --- behaviours ------------------------------------------------------------

    def process_behaviors(
        self,
        user_id: str,
        candidates: Sequence[Mapping[str, Any]],
        *,
        time: Time = None,
        policy: Mapping[str, float] | None = None,
    ) -> behavior_pb2.ProcessBehaviorsResponse:
        """Decides each candidate against the user's active behaviours, in order
        (INSERT / REINFORCE / SUPERSEDE / IGNORE, ``.decisions``) and applies it.

        Args:
            candidates: dicts ``{"intent": "preference" | "habit" | "skill" |
                "goal" | "belief", "target"?, "context"?, "polarity"?: "positive" |
                "negative", "credibility": 0-1, "vector" | "text"}``.
            time: when they were observed (decay is measured to it); None: now.
            policy: overrides of BehaviorPolicy fields, e.g. ``{"half_life_days": 90}``.

        Raises:
            InvalidArgument: a bad candidate (``candidates[i].field``); nothing is written.
        """
        return self._unary(common.process_behaviors(user_id, candidates, time=time, policy=policy))

    def list_behaviors(
        self,
        user_id: str,
        *,
        state: str = "",
        time: Time = None,
        policy: Mapping[str, float] | None = None,
        page_size: int = 100,
    ) -> Iterator[behavior_pb2.Behavior]:
        """The user's behaviours, oldest first; ``state`` "active", "superseded" or
        "" (all); ``effective_credibility`` decayed to ``time`` (None: now)."""
        token = ""
        while True:
            found, token = self._unary(
                common.list_behaviors_page(
                    user_id,
                    state=state,
                    time=time,
                    policy=policy,
                    page_size=page_size,
                    page_token=token,
                )
            )
            yield from found
            if not token:
                return

    # --- conversation routing --------------------------------------------------

    def route(
        self,
        conversation: str,
        content: str = "",
        *,
        role: str = "user",
        vector=None,
        time: Time = None,
        message_id: str = "",
        config: Mapping[str, float | int | bool] | None = None,
    ) -> RouteResult:
        """Routes one message of a conversation (created by its first message):
        STAY in the current topic branch, BRANCH into a new one, or ROUTE back to
        an earlier one. Returns once the message is durable.

        Args:
            conversation: an id ("chat-42") or "conversations/chat-42".
            content: the text, embedded by the server unless ``vector`` is given.
            role: "user" or "assistant".
            vector: the message's embedding (the server's embed model's dimension).
            time: when it was written (datetime or RFC 3339); None: now.
            message_id: your id for the message; re-sending it returns the stored
                decision, so retries are safe. "": the server assigns "m{index}".
                The client does not retry RouteMessage by itself: after
                Unavailable, send again with the same message_id.
            config: RoutingConfig fields to change for this conversation from
                this message on, e.g. ``{"stay_threshold": 0.3}``.

        Raises:
            InvalidArgument: MISSING_CONTENT, INVALID_ROLE, DIMENSION_MISMATCH,
                INVALID_NAME, LIMIT_EXCEEDED (config); nothing is written.
        """
        return self._unary(
            common.route_message(
                conversation,
                content,
                role=role,
                vector=vector,
                time=time,
                message_id=message_id,
                config=config,
            )
        )

    def branches(self, conversation: str, *, page_size: int = 100) -> list[BranchInfo]:
        """The conversation's branches in creation order (``current`` marks the
        current one), fetched ``page_size`` per RPC. Raises NotFound
        (CONVERSATION_NOT_FOUND)."""
        found: list[BranchInfo] = []
        token = ""
        while True:
            page = self._unary(common.list_branches_page(conversation, page_size, token))
            found.extend(page.branches)
            token = page.next_page_token
            if not token:
                return found

    def context(
        self, conversation: str, branch: str | None = None, *, max_messages: int = 0
    ) -> BranchContext:
        """A branch's messages in order (the latest ``max_messages``; 0: all) and
        the facts of every branch, the requested one flagged ``current``.

        Args:
            branch: a branch id ("b2") or resource name; None: the conversation's
                current branch (one more RPC).

        Raises:
            NotFound: CONVERSATION_NOT_FOUND, BRANCH_NOT_FOUND.
        """
        if branch is None:
            branch = self._unary(common.list_branches_page(conversation, 1, "")).current_branch_id
        return self._unary(common.branch_context(conversation, branch, max_messages))

    def facts(self, conversation: str, branch: str) -> FactsResult:
        """Extracts and stores a branch's facts now (the server's rules, or its
        configured LLM endpoint). Raises NotFound, Unavailable
        (FACTS_EXTRACTOR_FAILED)."""
        return self._unary(common.extract_facts(conversation, branch))

    # --- health ----------------------------------------------------------------

    def health(self, service: str = "") -> str:
        """The server's ``grpc.health.v1`` status name, e.g. ``"SERVING"`` or
        ``"NOT_SERVING"``; ``service`` "" is the whole server.

        Raises:
            ImportError: grpcio-health-checking is not installed.
            Unavailable: the server cannot be reached.
        """
        return self._unary(common.health_check(service))


class UpsertWriter:
    """A resuming, batching writer of points; made by :meth:`DriftClient.writer`.

    Not thread-safe: add from one thread. Acks are read in the calling thread,
    inside ``add``, ``flush`` and ``close``, so failures surface there.
    """

    def __init__(self, stubs: common.Stubs, state: common.WriterState) -> None:
        self._stubs = stubs
        self._state = state
        self._requests: queue.SimpleQueue | None = None  # feeds the open stream
        self._responses: Any = None

    @property
    def progress(self) -> WriteProgress:
        """Counts and per-point errors so far (see :class:`WriteProgress`)."""
        return self._state.progress

    def add(self, point: PointLike) -> None:
        """Adds one point (a Point or a dict, as :meth:`DriftClient.upsert`).

        Raises:
            InvalidArgument: a malformed point (``points[i]``, i the index it
                would have had); it is not taken and the writer stays usable.
            Unavailable: the server did not come back within the client's
                timeout (or retries are off).
            DriftdError: the stream failed otherwise (NotFound: no such collection).
        """
        batch = self._state.add(point)
        if batch is not None:
            self._send(batch)

    def extend(self, points: Iterable[PointLike]) -> None:
        """Adds every point of ``points``, in order. Raises as :meth:`add`."""
        for point in points:
            self.add(point)

    def flush(self) -> WriteProgress:
        """Sends the points added so far and waits until all are acknowledged
        (durable). Raises as :meth:`add`."""
        batch = self._state.cut()
        if batch is not None:
            self._send(batch)
        while self._state.unacked:
            self._receive()
        return self.progress

    def close(self) -> WriteProgress:
        """Flushes, then ends the stream. Raises as :meth:`add`."""
        self.flush()
        if self._responses is not None:
            responses = self._responses
            self._end_stream()
            # Every batch is acknowledged: a failure while the server winds the
            # stream down loses nothing.
            with contextlib.suppress(grpc.RpcError):
                for _ in responses:
                    pass
        return self.progress

    def __enter__(self) -> UpsertWriter:
        return self

    def __exit__(self, exc_type, *exc_info) -> None:
        """Closes on success; after an exception, cancels the stream without
        flushing (``progress.acked`` says how far the writing got)."""
        if exc_type is None:
            self.close()
        elif self._responses is not None:
            self._responses.cancel()
            self._end_stream()

    def _send(self, batch: point_pb2.StreamUpsertPointsRequest) -> None:
        if self._requests is None:
            self._open()  # sends every unacknowledged batch, this one included
        else:
            self._requests.put(batch)
        while self._state.full:
            self._receive()

    def _open(self) -> None:
        requests: queue.SimpleQueue = queue.SimpleQueue()
        for _, batch in self._state.unacked:
            requests.put(batch)
        self._requests = requests
        # gRPC pulls the requests on its own thread; None ends them.
        self._responses = self._stubs.points.StreamUpsertPoints(iter(requests.get, None))

    def _end_stream(self) -> None:
        """Ends the requests of the open stream, which frees gRPC's thread."""
        assert self._requests is not None
        self._requests.put(None)
        self._requests = self._responses = None

    def _receive(self) -> None:
        """Reads the next ack, re-opening the stream after UNAVAILABLE."""
        while True:
            if self._responses is None:
                self._open()
            try:
                response = next(self._responses)
            except StopIteration:
                self._end_stream()
                raise self._state.ended_early() from None
            except grpc.RpcError as err:
                self._end_stream()
                time.sleep(self._state.retry_delay(err))
                ready = grpc.channel_ready_future(self._stubs.channel)
                try:
                    ready.result(timeout=self._state.time_left())
                except grpc.FutureTimeoutError:
                    raise self._state.not_back() from err
                finally:
                    ready.cancel()
            else:
                self._state.ack(response)
                return
