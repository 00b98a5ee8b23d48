"""Replica membership and key ownership (server mode with ``peers``).

Every collection, conversation and behaviour user (a *key*: ``collections/{id}``,
``conversations/{id}``, ``users/{id}``) has one owner among the live replicas,
chosen by consistent hashing (uhashring's ketama-compatible ring, md5 over
virtual nodes: when a replica leaves, only its keys move, to the next replica
on the ring; when one joins, it takes only its own share). The pattern is that
of Cortex/Loki's hash ring.

Membership: the ``peers`` addresses (``host:port``) are resolved every
:data:`RESOLVE_SECONDS`; a DNS name that resolves to several addresses (a
Kubernetes headless Service) stands for all of them. Each peer is probed with a
gRPC health check (service ``""``) every :data:`PROBE_SECONDS`: a peer joins the
ring on its first SERVING answer and leaves it after :data:`DOWN_AFTER`
consecutive failed probes (refused, timed out, NOT_SERVING while draining), so
a dead owner's keys move within about ``PROBE_SECONDS * (DOWN_AFTER + 1)``
(3 s). This replica is always on its own ring. Replicas may briefly disagree
(each probes on its own clock); forwarding then goes at most one hop
(:mod:`driftd.server.forwarding`) and the storage stays safe under a double owner.

With TLS on the port, probes and forwarded calls go over TLS channels
(:class:`~driftd.server.security.tls.PeerCredentials`); when its files change,
new calls get new channels and calls on the old ones get
:data:`RETIRE_SECONDS` to finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from uhashring import HashRing

from driftd import metrics
from driftd.server.security.tls import PeerCredentials

log = logging.getLogger(__name__)

#: Seconds between health probes of each peer.
PROBE_SECONDS = 1.0
#: Consecutive failed probes after which a peer leaves the ring.
DOWN_AFTER = 2
#: Seconds between DNS resolutions of ``peers``.
RESOLVE_SECONDS = 5.0
#: Seconds calls on a channel replaced by new credentials get to finish.
RETIRE_SECONDS = 60.0


def key_kind(key: str) -> str:
    """``"collections/x"`` -> ``"collections"``."""
    return key.partition("/")[0]


class Cluster:
    """This replica's view of the replica set and of who owns which key.

    Args:
        address: this replica's address as its peers reach it (``host:port``,
            the form a resolved peer takes: ``10.0.0.7:50051``, ``[fd00::7]:50051``).
        peers: ``host:port`` of every replica (this one may be among them);
            empty: driftd runs alone and owns everything.
        channel_options: gRPC channel arguments of the channels to peers.
        credentials: TLS credentials of the channels to peers; None: plaintext.
    """

    def __init__(
        self,
        address: str,
        peers: Sequence[str] = (),
        *,
        channel_options: Sequence[tuple[str, int | str]] = (),
        credentials: PeerCredentials | None = None,
    ) -> None:
        self.address = address
        self._peers = tuple(p for p in peers if p)
        self._channel_options = tuple(channel_options)
        self._credentials = credentials
        self._retiring: set[asyncio.Task] = set()
        self._resolved: set[str] = set()
        self._addresses_of: dict[str, set[str]] = {}  # peer entry -> its last addresses
        self._failures: dict[str, int] = {}
        self._live: frozenset[str] = frozenset({address})
        self._ring = HashRing(nodes=[address])
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._listeners: list[Callable[[], None]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None

    @property
    def enabled(self) -> bool:
        """True when driftd runs with peers (ownership and forwarding apply)."""
        return bool(self._peers)

    @property
    def members(self) -> frozenset[str]:
        """The live replicas' addresses, this one included."""
        return self._live

    def owner(self, key: str) -> str:
        """The address of the replica that owns ``key`` (this one's when alone)."""
        return self._ring.get_node(key)

    def owns(self, key: str) -> bool:
        """True when this replica owns ``key``."""
        return self.owner(key) == self.address

    def collection_owner(self, collection_id: str) -> str:
        """The owner of a collection, for ``Collection.owner``: "" without peers."""
        return self.owner("collections/" + collection_id) if self.enabled else ""

    def add_listener(self, fn: Callable[[], None]) -> None:
        """Calls ``fn()`` after every change of the live set (on the event loop;
        quick, must not raise): capabilities drop the state of keys they lost."""
        self._listeners.append(fn)

    def channel(self, address: str) -> grpc.aio.Channel:
        """The (reused) channel to a peer."""
        ch = self._channels.get(address)
        if ch is None:
            ch = self._channels[address] = (
                grpc.aio.insecure_channel(address, options=self._channel_options)
                if self._credentials is None
                else grpc.aio.secure_channel(
                    address, self._credentials.credentials, options=self._channel_options
                )
            )
        return ch

    def suspect(self, address: str) -> None:
        """A call to ``address`` failed to connect: probe now instead of waiting."""
        if address != self.address:
            self._wake.set()

    async def start(self) -> None:
        """Resolves and probes the peers once (so a replica starting into a running
        set knows it before serving), then keeps doing so in the background."""
        if not self.enabled:
            return
        await self._resolve()
        await self._probe()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="driftd-cluster")

    async def stop(self) -> None:
        """Stops probing and closes the channels to peers."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for ch in self._channels.values():
            await ch.close()
        self._channels.clear()
        await asyncio.gather(*self._retiring)  # quick: the server has drained

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_resolve = loop.time() + RESOLVE_SECONDS
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), PROBE_SECONDS)
            self._wake.clear()
            try:
                if loop.time() >= next_resolve:
                    next_resolve = loop.time() + RESOLVE_SECONDS
                    await self._resolve()
                if self._credentials is not None and self._credentials.refresh():
                    self._retire_channels()
                await self._probe()
            except Exception:  # one bad round must not end membership
                log.exception("membership round failed")

    async def _resolve(self) -> None:
        """Resolves ``peers``; a name that does not resolve now keeps its last
        addresses (DNS hiccup), and addresses no name yields any more go."""
        loop = asyncio.get_running_loop()
        for peer in self._peers:
            host, _, port = peer.rpartition(":")
            try:
                infos = await loop.getaddrinfo(host.strip("[]"), int(port), type=socket.SOCK_STREAM)
            except (OSError, ValueError) as exc:
                log.warning("cannot resolve peer %s: %s", peer, exc)
                continue
            self._addresses_of[peer] = {
                f"[{sockaddr[0]}]:{port}" if family == socket.AF_INET6 else f"{sockaddr[0]}:{port}"
                for family, _, _, _, sockaddr in infos
            }
        found = set().union(*self._addresses_of.values()) - {self.address}
        for gone in self._resolved - found:
            self._failures.pop(gone, None)
            ch = self._channels.pop(gone, None)
            if ch is not None:
                await ch.close()
        self._resolved = found

    def _retire_channels(self) -> None:
        """New credentials: later calls open new channels; the old ones close
        once their calls end (at most :data:`RETIRE_SECONDS`)."""
        loop = asyncio.get_running_loop()
        for ch in self._channels.values():
            task = loop.create_task(ch.close(RETIRE_SECONDS))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)
        self._channels.clear()

    async def _check(self, address: str) -> str | None:
        """None when ``address`` answers SERVING, else why not."""
        try:
            resp = await health_pb2_grpc.HealthStub(self.channel(address)).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=PROBE_SECONDS
            )
        except grpc.aio.AioRpcError as err:
            # A TLS failure (unknown CA, wrong name) shows only here.
            return f"{err.code().name}: {err.details()}"
        if resp.status != health_pb2.HealthCheckResponse.SERVING:
            return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
        return None

    async def _probe(self) -> None:
        peers = sorted(self._resolved)
        results = await asyncio.gather(*(self._check(a) for a in peers))
        live = {self.address}
        for address, failure in zip(peers, results, strict=True):
            if failure is None:
                self._failures[address] = 0
            else:
                # A peer never seen SERVING stays out; a live one gets DOWN_AFTER tries.
                self._failures[address] = self._failures.get(address, DOWN_AFTER - 1) + 1
                if self._failures[address] == DOWN_AFTER:  # once per outage
                    log.warning("peer %s is out of the ring: %s", address, failure)
            if self._failures[address] < DOWN_AFTER:
                live.add(address)
        self._set_live(frozenset(live))

    def _set_live(self, live: frozenset[str]) -> None:
        metrics.CLUSTER_MEMBERS.set(len(live))
        if live == self._live:
            return
        log.info(
            "replicas: %s (joined: %s; left: %s)",
            ", ".join(sorted(live)),
            ", ".join(sorted(live - self._live)) or "-",
            ", ".join(sorted(self._live - live)) or "-",
        )
        self._live = live
        self._ring = HashRing(nodes=sorted(live))
        metrics.OWNERSHIP_CHANGES.inc()
        for fn in self._listeners:
            fn()
