"""Readiness follows the storage: a periodic heartbeat to Chroma sets the driftd
services' health NOT_SERVING while it fails and SERVING again once it answers.

Liveness (health service "") is left alone: a Chroma outage is no reason to
restart driftd, only to route reads and writes elsewhere (Kubernetes'
readinessProbe checks ``driftd.v1.PointService``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from grpc_health.v1 import health, health_pb2

from driftd.engine.root import Driftd

logger = logging.getLogger(__name__)


async def follow_storage(
    root: Driftd,
    servicer: health.aio.HealthServicer,
    services: Iterable[str],
    interval: float,
) -> None:
    """Runs until cancelled: every ``interval`` seconds a heartbeat (at most
    ``interval`` seconds long) decides the health of ``services``."""
    services = tuple(services)
    serving = True
    while True:
        await asyncio.sleep(interval)
        ok = await root.ready(timeout=interval)
        if ok == serving:
            continue
        serving = ok
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if ok
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in services:
            await servicer.set(service, status)
        if ok:
            logger.info("storage reachable again: SERVING")
        else:
            logger.warning("storage unreachable: NOT_SERVING until it answers")
