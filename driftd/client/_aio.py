"""AsyncDriftClient: the asyncio Python client of a driftd server (grpc.aio).

Same methods, arguments, return values and errors as :class:`DriftClient`
(see its docstrings); the unary methods are coroutines and the streaming ones
are async iterators. Close async iterators you leave early (``contextlib.aclosing``)
so the RPC is cancelled at once rather than at garbage collection.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import grpc

from driftd import types
from driftd.client import _common as common
from driftd.client._common import PointLike, RetryPolicy, Time, UpsertAck, WriteProgress
from driftd.routing.types import BranchContext, BranchInfo, FactsResult, RouteResult
from driftd.v1 import behavior_pb2, collection_pb2, monitor_pb2, point_pb2

T = TypeVar("T")


class AsyncDriftClient:
    """An asyncio client over one ``grpc.aio`` channel; use as an async context manager.

    Arguments as :class:`driftd.client.DriftClient`. Create and use it on one
    event loop.
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
            grpc.aio.secure_channel(target, credentials, options=opts)
            if credentials is not None
            else grpc.aio.insecure_channel(target, options=opts)
        )
        self._stubs = common.Stubs(self._channel, metadata)
        self._timeout = timeout
        self._retries = retries
        self.target = target

    async def close(self) -> None:
        """Closes the channel; RPCs in flight are cancelled."""
        await self._channel.close()

    async def __aenter__(self) -> AsyncDriftClient:
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.close()

    async def _unary(self, call: common.Call[T]) -> T:
        with common.translate_errors(call.index_offset):
            response = await call.bind(self._stubs)(call.request, timeout=self._timeout)
        return call.parse(response)

    @staticmethod
    async def _stream(responses, read: Callable[[Any], Iterable[T]]) -> AsyncIterator[T]:
        # Cancelling on the way out stops the server's work when the caller
        # stops iterating early; after a normal end it is a no-op.
        try:
            with common.translate_errors():
                async for response in responses:
                    for item in read(response):
                        yield item
        finally:
            responses.cancel()

    # --- collections ---------------------------------------------------------

    async def create_collection(
        self,
        name: str,
        *,
        dim: int | None = None,
        distance: str = "cosine",
        embed_model: str | None = None,
    ) -> types.CollectionInfo:
        """See :meth:`DriftClient.create_collection`."""
        return await self._unary(common.create_collection(name, dim, distance, embed_model))

    async def get_collection(self, name: str) -> types.CollectionInfo:
        """See :meth:`DriftClient.get_collection`."""
        return await self._unary(common.get_collection(name))

    async def list_collections(
        self, *, page_size: int = 100
    ) -> AsyncIterator[types.CollectionInfo]:
        """See :meth:`DriftClient.list_collections`."""
        token = ""
        while True:
            infos, token = await self._unary(common.list_collections_page(page_size, token))
            for info in infos:
                yield info
            if not token:
                return

    def export_collection(
        self, name: str, *, chunk_size: int = 0, timeout: float | None = None
    ) -> AsyncIterator[collection_pb2.ExportCollectionResponse]:
        """See :meth:`DriftClient.export_collection` (an async iterator)."""
        responses = self._stubs.collections.ExportCollection(
            common.export_request(name, chunk_size), timeout=timeout
        )
        return self._stream(responses, lambda response: (response,))

    async def import_collection(
        self,
        requests: Iterable[collection_pb2.ImportCollectionRequest]
        | AsyncIterable[collection_pb2.ImportCollectionRequest],
        *,
        timeout: float | None = None,
    ) -> collection_pb2.ImportCollectionResponse:
        """See :meth:`DriftClient.import_collection`; ``requests`` may be async."""
        with common.translate_errors():
            return await self._stubs.collections.ImportCollection(requests, timeout=timeout)

    async def delete_collection(self, name: str) -> None:
        """See :meth:`DriftClient.delete_collection`."""
        await self._unary(common.delete_collection(name))

    async def attach_collection(
        self, chroma_collection: str, *, time_key: str, series_key: str = "", embed_model: str = ""
    ) -> types.CollectionInfo:
        """See :meth:`DriftClient.attach_collection`."""
        return await self._unary(
            common.attach_collection(chroma_collection, time_key, series_key, embed_model)
        )

    # --- points ----------------------------------------------------------------

    async def upsert(
        self, name: str, points: Iterable[PointLike], *, batch_size: int = 1000
    ) -> types.UpsertResult:
        """See :meth:`DriftClient.upsert`."""
        result = None
        for call in common.upsert_batches(name, points, batch_size):
            result = common.add_results(result, await self._unary(call))
        assert result is not None  # upsert_batches yields at least one call
        return result

    async def stream_upsert(
        self,
        name: str,
        points: Iterable[PointLike] | AsyncIterable[PointLike],
        *,
        batch_size: int = 500,
        start_sequence: int = 0,
    ) -> AsyncIterator[UpsertAck]:
        """See :meth:`DriftClient.stream_upsert`; ``points`` may also be an async iterable."""
        requests = common.StreamUpsertRequests(name, points, batch_size, start_sequence)
        async for ack in self._stream(
            self._stubs.points.StreamUpsertPoints(requests), common.read_ack
        ):
            yield ack
        requests.raise_error()

    def writer(
        self,
        name: str,
        *,
        batch_size: int = 500,
        on_ack: Callable[[UpsertAck], object] | None = None,
    ) -> AsyncUpsertWriter:
        """See :meth:`DriftClient.writer`; use it with ``async with``."""
        state = common.WriterState(name, batch_size, self._retries, self._timeout, on_ack)
        return AsyncUpsertWriter(self._stubs, state)

    async def get_points(
        self, name: str, ids: Sequence[str], *, include_vectors: bool = False
    ) -> tuple[list[types.Point], list[str]]:
        """See :meth:`DriftClient.get_points`."""
        return await self._unary(common.get_points(name, ids, include_vectors))

    async def delete_points(self, name: str, ids: Sequence[str]) -> int:
        """See :meth:`DriftClient.delete_points`."""
        return await self._unary(common.delete_points(name, ids))

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
    ) -> AsyncIterator[types.Point]:
        """See :meth:`DriftClient.trajectory` (an async iterator)."""
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

    async def search(
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
        """See :meth:`DriftClient.search`."""
        return await self._unary(
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

    async def flow_vector(
        self, name: str, *, vector=None, text: str | None = None, point_id: str | None = None
    ) -> types.FlowProbe:
        """See :meth:`DriftClient.flow_vector`."""
        return await self._unary(
            common.probe_flow(name, vector=vector, text=text, point_id=point_id)
        )

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
    ) -> AsyncIterator[types.SimulationStep]:
        """See :meth:`DriftClient.simulate_stream` (an async iterator)."""
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

    async def flow_simulate(
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
        """See :meth:`DriftClient.flow_simulate`."""
        stream = self.simulate_stream(
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
        return [step async for step in stream]

    async def flow_attractors(
        self,
        name: str,
        *,
        seeds: int = 64,
        representatives: int = 3,
        include_vectors: bool = False,
        seed: int = 0,
        bootstrap: int | None = None,
    ) -> types.AttractorSet:
        """See :meth:`DriftClient.flow_attractors`."""
        return await self._unary(
            common.find_attractors(
                name,
                seeds=seeds,
                representatives=representatives,
                include_vectors=include_vectors,
                seed=seed,
                bootstrap=bootstrap,
            )
        )

    async def flow_chapters(
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
        """See :meth:`DriftClient.flow_chapters`."""
        return await self._unary(
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

    async def compare_windows(
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
        """See :meth:`DriftClient.compare_windows`."""
        return await self._unary(
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

    async def embedding_health(
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
        """See :meth:`DriftClient.embedding_health`."""
        return await self._unary(
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
    ) -> AsyncIterator[monitor_pb2.WatchCollectionResponse]:
        """See :meth:`DriftClient.watch`."""
        request = common.watch_request(name, after_sequence=after_sequence, event_types=event_types)
        return self._stream(self._stubs.monitor.WatchCollection(request), common.read_event)

    async def create_drift_rule(
        self,
        name: str,
        *,
        window_seconds: float,
        rule_id: str = "",
        p_value_threshold: float = 0.01,
        series: str = "",
        min_points: int = 20,
    ) -> monitor_pb2.DriftRule:
        """See :meth:`DriftClient.create_drift_rule`."""
        return await self._unary(
            common.create_drift_rule(
                name,
                window_seconds=window_seconds,
                rule_id=rule_id,
                p_value_threshold=p_value_threshold,
                series=series,
                min_points=min_points,
            )
        )

    async def get_drift_rule(self, name: str, rule_id: str) -> monitor_pb2.DriftRule:
        """See :meth:`DriftClient.get_drift_rule`."""
        return await self._unary(common.get_drift_rule(name, rule_id))

    async def list_drift_rules(
        self, name: str, *, page_size: int = 100
    ) -> AsyncIterator[monitor_pb2.DriftRule]:
        """See :meth:`DriftClient.list_drift_rules`."""
        token = ""
        while True:
            rules, token = await self._unary(common.list_drift_rules_page(name, page_size, token))
            for rule in rules:
                yield rule
            if not token:
                return

    async def delete_drift_rule(self, name: str, rule_id: str) -> None:
        """See :meth:`DriftClient.delete_drift_rule`."""
        await self._unary(common.delete_drift_rule(name, rule_id))

    # --- behaviours ------------------------------------------------------------

    async def process_behaviors(
        self,
        user_id: str,
        candidates: Sequence[Mapping[str, Any]],
        *,
        time: Time = None,
        policy: Mapping[str, float] | None = None,
    ) -> behavior_pb2.ProcessBehaviorsResponse:
        """See :meth:`DriftClient.process_behaviors`."""
        return await self._unary(
            common.process_behaviors(user_id, candidates, time=time, policy=policy)
        )

    async def list_behaviors(
        self,
        user_id: str,
        *,
        state: str = "",
        time: Time = None,
        policy: Mapping[str, float] | None = None,
        page_size: int = 100,
    ) -> AsyncIterator[behavior_pb2.Behavior]:
        """See :meth:`DriftClient.list_behaviors`."""
        token = ""
        while True:
            found, token = await self._unary(
                common.list_behaviors_page(
                    user_id,
                    state=state,
                    time=time,
                    policy=policy,
                    page_size=page_size,
                    page_token=token,
                )
            )
            for behavior in found:
                yield behavior
            if not token:
                return

    # --- conversation routing --------------------------------------------------

    async def route(
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
        """See :meth:`DriftClient.route`."""
        return await self._unary(
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

    async def branches(self, conversation: str, *, page_size: int = 100) -> list[BranchInfo]:
        """See :meth:`DriftClient.branches`."""
        found: list[BranchInfo] = []
        token = ""
        while True:
            page = await self._unary(common.list_branches_page(conversation, page_size, token))
            found.extend(page.branches)
            token = page.next_page_token
            if not token:
                return found

    async def context(
        self, conversation: str, branch: str | None = None, *, max_messages: int = 0
    ) -> BranchContext:
        """See :meth:`DriftClient.context`."""
        if branch is None:
            page = await self._unary(common.list_branches_page(conversation, 1, ""))
            branch = page.current_branch_id
        return await self._unary(common.branch_context(conversation, branch, max_messages))

    async def facts(self, conversation: str, branch: str) -> FactsResult:
        """See :meth:`DriftClient.facts`."""
        return await self._unary(common.extract_facts(conversation, branch))

    # --- health ----------------------------------------------------------------

    async def health(self, service: str = "") -> str:
        """See :meth:`DriftClient.health`."""
        return await self._unary(common.health_check(service))


class AsyncUpsertWriter:
    """The asyncio twin of :class:`driftd.client.UpsertWriter` (same methods,
    coroutines; ``extend`` also takes async iterables); made by
    :meth:`AsyncDriftClient.writer`. Use it from one task."""

    def __init__(self, stubs: common.Stubs, state: common.WriterState) -> None:
        self._stubs = stubs
        self._state = state
        self._call: Any = None  # the open StreamUpsertPoints call
        self._send_failed = False  # a write on self._call failed in the transport

    @property
    def progress(self) -> WriteProgress:
        """See :attr:`driftd.client.UpsertWriter.progress`."""
        return self._state.progress

    async def add(self, point: PointLike) -> None:
        """See :meth:`driftd.client.UpsertWriter.add`."""
        batch = self._state.add(point)
        if batch is not None:
            await self._send(batch)

    async def extend(self, points: Iterable[PointLike] | AsyncIterable[PointLike]) -> None:
        """See :meth:`driftd.client.UpsertWriter.extend`."""
        if isinstance(points, AsyncIterable):
            async for point in points:
                await self.add(point)
        else:
            for point in points:
                await self.add(point)

    async def flush(self) -> WriteProgress:
        """See :meth:`driftd.client.UpsertWriter.flush`."""
        batch = self._state.cut()
        if batch is not None:
            await self._send(batch)
        while self._state.unacked:
            await self._receive()
        return self.progress

    async def close(self) -> WriteProgress:
        """See :meth:`driftd.client.UpsertWriter.close`."""
        await self.flush()
        if self._call is not None:
            call, self._call = self._call, None
            # Every batch is acknowledged: a failure while the server winds the
            # stream down loses nothing.
            with contextlib.suppress(grpc.RpcError):
                await call.done_writing()
                while await call.read() is not grpc.aio.EOF:
                    pass
        return self.progress

    async def __aenter__(self) -> AsyncUpsertWriter:
        return self

    async def __aexit__(self, exc_type, *exc_info) -> None:
        """See :meth:`driftd.client.UpsertWriter.__exit__`."""
        if exc_type is None:
            await self.close()
        elif self._call is not None:
            self._call.cancel()
            self._call = None

    async def _send(self, batch: point_pb2.StreamUpsertPointsRequest) -> None:
        if self._call is None:
            await self._open()  # sends every unacknowledged batch, this one included
        else:
            await self._write(batch)
        while self._state.full:
            await self._receive()

    async def _open(self) -> None:
        self._call = self._stubs.points.StreamUpsertPoints()
        self._send_failed = False
        for _, batch in self._state.unacked:
            await self._write(batch)

    async def _write(self, batch: point_pb2.StreamUpsertPointsRequest) -> None:
        # A broken stream fails again on the next read, which reconnects.
        if not self._call.done():
            try:
                await self._call.write(batch)
            except grpc.RpcError:
                self._send_failed = True

    async def _receive(self) -> None:
        """Reads the next ack, re-opening the stream after UNAVAILABLE."""
        while True:
            if self._call is None:
                await self._open()
            try:
                response = await self._call.read()
            except grpc.RpcError as err:
                self._call = None
                delay = self._state.retry_delay(err, send_failed=self._send_failed)
                await asyncio.sleep(delay)
                try:
                    await asyncio.wait_for(
                        self._stubs.channel.channel_ready(), self._state.time_left()
                    )
                except TimeoutError:
                    raise self._state.not_back() from err
                continue
            if response is grpc.aio.EOF:
                self._call = None
                raise self._state.ended_early()
            self._state.ack(response)
            return
