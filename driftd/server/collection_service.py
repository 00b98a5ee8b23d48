"""CollectionService: create, get, list, delete and attach collections; export
and import them (online backup and restore)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import replace

from google.protobuf import empty_pb2

from driftd import convert
from driftd.engine import AsyncDriftDB, parse_collection_name
from driftd.errors import FieldViolation, InvalidArgument
from driftd.monitor.monitor import Monitor, parse_rule_name
from driftd.server.cluster import Cluster
from driftd.server.forwarding import owned_collection
from driftd.server.monitor_service import create_rule, rule_to_proto
from driftd.server.status import maps_errors
from driftd.types import CollectionInfo
from driftd.v1 import collection_pb2, collection_pb2_grpc

log = logging.getLogger(__name__)

#: ListCollections' page size when the request says 0.
DEFAULT_PAGE_SIZE = 100
#: ExportCollection's points per message when the request says 0.
DEFAULT_EXPORT_CHUNK = 500


class CollectionServiceServicer(collection_pb2_grpc.CollectionServiceServicer):
    """Translates CollectionService RPCs to engine calls; errors map via
    :func:`driftd.server.status.maps_errors`.

    With a cluster (server mode with peers), ``Collection.owner`` is the owner
    replica's address, and ListCollections takes the counts of collections
    owned elsewhere from their owners instead of loading them here.
    """

    def __init__(
        self, engine: AsyncDriftDB, monitor: Monitor, cluster: Cluster | None = None
    ) -> None:
        self._engine = engine
        self._monitor = monitor
        self._cluster = cluster

    def _owner(self, collection_id: str) -> str:
        return self._cluster.collection_owner(collection_id) if self._cluster else ""

    def _local(self, collection_id: str) -> bool:
        return not self._cluster or self._cluster.owns("collections/" + collection_id)

    def _proto(self, info: CollectionInfo) -> collection_pb2.Collection:
        return convert.collection_to_proto(replace(info, owner=self._owner(info.name)))

    async def _create(self, collection_id: str, spec: collection_pb2.Collection):
        return await self._engine.create_collection(
            collection_id,
            dim=spec.dimension or None,
            # An unknown enum number passes through as text for the engine to reject.
            distance=convert.DISTANCE_FROM_PROTO.get(spec.distance, str(spec.distance)),
            embed_model=spec.embed_model,
        )

    @maps_errors
    async def CreateCollection(self, request, context) -> collection_pb2.Collection:
        return self._proto(await self._create(request.collection_id, request.collection))

    @maps_errors
    async def GetCollection(self, request, context) -> collection_pb2.Collection:
        name = parse_collection_name(request.name, field="name")
        return self._proto(await self._engine.get_collection(name))

    @maps_errors
    async def ListCollections(self, request, context) -> collection_pb2.ListCollectionsResponse:
        remote: list[str] = []  # owned elsewhere: their owners report them

        def load(collection_id: str) -> bool:
            if self._local(collection_id):
                return True
            remote.append(collection_id)
            return False

        infos, next_token = await self._engine.list_collections(
            page_size=request.page_size or DEFAULT_PAGE_SIZE,
            page_token=request.page_token,
            load=load,
        )
        cluster = self._cluster
        fetched = (
            await asyncio.gather(*(owned_collection(cluster, name, context) for name in remote))
            if cluster is not None and remote
            else []
        )
        elsewhere = dict(zip(remote, fetched, strict=True))
        got = [elsewhere[i.name] if i.name in elsewhere else self._proto(i) for i in infos]
        return collection_pb2.ListCollectionsResponse(
            collections=[c for c in got if c is not None],  # None: deleted meanwhile
            next_page_token=next_token,
        )

    @maps_errors
    async def DeleteCollection(self, request, context) -> empty_pb2.Empty:
        await self._engine.delete_collection(parse_collection_name(request.name, field="name"))
        return empty_pb2.Empty()

    @maps_errors
    async def AttachCollection(self, request, context) -> collection_pb2.Collection:
        info = await self._engine.attach_collection(
            request.chroma_collection,
            time_key=request.time_key,
            series_key=request.series_key,
            embed_model=request.embed_model,
        )
        return self._proto(info)

    @maps_errors
    async def ExportCollection(
        self, request, context
    ) -> AsyncIterator[collection_pb2.ExportCollectionResponse]:
        """Raises NotFound, InvalidArgument (bad name, chunk_size over 10,000)."""
        name = parse_collection_name(request.name, field="name")
        info = await self._engine.get_collection(name)
        rules, token = [], ""
        while True:
            page, token = await self._monitor.list_rules(name, page_size=1000, page_token=token)
            rules += page
            if not token:
                break
        yield collection_pb2.ExportCollectionResponse(
            collection=self._proto(info),
            drift_rules=[rule_to_proto(r) for r in rules],
        )
        chunks = self._engine.trajectory(
            name, include_vectors=True, chunk_size=request.chunk_size or DEFAULT_EXPORT_CHUNK
        )
        async with contextlib.aclosing(chunks):
            async for chunk in chunks:
                yield collection_pb2.ExportCollectionResponse(
                    points=[convert.point_to_proto(p) for p in chunk]
                )

    @maps_errors
    async def ImportCollection(self, request_iterator, context):
        """Creates the collection from the first message, then writes each
        message's points (strictly: one bad point rejects the import). On any
        failure or cancellation the new collection is deleted again.

        Raises:
            InvalidArgument: no messages, no collection_id on the first, settings
                or rules on a later one, bad settings, rules or points.
            AlreadyExists: the collection id is taken.
        """
        name, points, rules = "", 0, 0
        try:
            async for message in request_iterator:
                if not name:
                    if not message.collection_id:
                        raise InvalidArgument(
                            "the first message must carry collection_id",
                            field_violations=[FieldViolation("collection_id", "required")],
                        )
                    await self._create(message.collection_id, message.collection)
                    name = message.collection_id
                    for i, spec in enumerate(message.drift_rules):
                        _, rule_id = parse_rule_name(spec.name, field=f"drift_rules[{i}].name")
                        await create_rule(self._monitor, name, rule_id, spec, f"drift_rules[{i}]")
                        rules += 1
                elif message.collection_id or message.HasField("collection") or message.drift_rules:
                    raise InvalidArgument(
                        "collection_id, collection and drift_rules go in the first message only",
                        field_violations=[FieldViolation("collection_id", "first message only")],
                    )
                if message.points:
                    result = await self._engine.upsert(
                        name, [convert.point_from_proto(p) for p in message.points]
                    )
                    points += result.upserted
        except BaseException:
            if name:
                log.info("import into %s failed: deleting the partial collection", name)
                with contextlib.suppress(Exception):
                    await self._engine.delete_collection(name)
            raise
        if not name:
            raise InvalidArgument(
                "an import needs at least one message",
                field_violations=[FieldViolation("collection_id", "required")],
            )
        return collection_pb2.ImportCollectionResponse(
            collection=self._proto(await self._engine.get_collection(name)),
            imported_point_count=points,
            imported_drift_rule_count=rules,
        )
