"""CollectionService: create, get, list, delete and attach collections."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from google.protobuf import empty_pb2

from driftd import convert
from driftd.engine import AsyncDriftDB, parse_collection_name
from driftd.server.cluster import Cluster
from driftd.server.forwarding import owned_collection
from driftd.server.status import maps_errors
from driftd.types import CollectionInfo
from driftd.v1 import collection_pb2, collection_pb2_grpc

#: ListCollections' page size when the request says 0.
DEFAULT_PAGE_SIZE = 100


class CollectionServiceServicer(collection_pb2_grpc.CollectionServiceServicer):
    """Translates CollectionService RPCs to engine calls; errors map via
    :func:`driftd.server.status.maps_errors`.

    With a cluster (server mode with peers), ``Collection.owner`` is the owner
    replica's address, and ListCollections takes the counts of collections
    owned elsewhere from their owners instead of loading them here.
    """

    def __init__(self, engine: AsyncDriftDB, cluster: Cluster | None = None) -> None:
        self._engine = engine
        self._cluster = cluster

    def _owner(self, collection_id: str) -> str:
        return self._cluster.collection_owner(collection_id) if self._cluster else ""

    def _local(self, collection_id: str) -> bool:
        return not self._cluster or self._cluster.owns("collections/" + collection_id)

    def _proto(self, info: CollectionInfo) -> collection_pb2.Collection:
        return convert.collection_to_proto(replace(info, owner=self._owner(info.name)))

    @maps_errors
    async def CreateCollection(self, request, context) -> collection_pb2.Collection:
        spec = request.collection
        info = await self._engine.create_collection(
            request.collection_id,
            dim=spec.dimension or None,
            # An unknown enum number passes through as text for the engine to reject.
            distance=convert.DISTANCE_FROM_PROTO.get(spec.distance, str(spec.distance)),
            embed_model=spec.embed_model,
        )
        return self._proto(info)

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
