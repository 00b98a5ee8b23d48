"""Quotas and rate limits of the security layer, per API key (or global when
the server has no keys: every caller is the anonymous principal).

Each refusal is a ``QuotaExceeded`` (RESOURCE_EXHAUSTED) with a retry delay
(``google.rpc.RetryInfo``) and the limit hit (``google.rpc.QuotaFailure``).
All state lives on the event loop's thread: no locks.
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from driftd.config import Settings
from driftd.errors import QuotaExceeded, QuotaViolation

#: Seconds a client should wait after a concurrency or size quota: these free up
#: when other calls finish, not at a known time.
BUSY_RETRY_SECONDS = 1.0
#: Seconds after a disk-pressure refusal: space comes back only by an operator.
DISK_RETRY_SECONDS = 30.0
#: How long a disk-use reading is reused (one statvfs per second at most).
DISK_CHECK_SECONDS = 1.0


def _subject(key: str) -> str:
    return f"key:{key or 'anonymous'}"


class TokenBucket:
    """A token bucket (``rate`` tokens per second, ``burst`` at most) with a
    lazily computed fill level."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self.tokens = float(burst)
        self.stamp = time.monotonic()

    def take(self) -> float:
        """Takes one token; returns 0.0, or the seconds until one is available
        (nothing taken)."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class Quotas:
    """Admission control of RPCs.

    Args:
        settings: the limits (``max_rpcs_per_key``, ``rate_limit_rps``...; 0 means
            unlimited). The read-only mode watches ``chroma_path``'s filesystem,
            and nothing in server mode (``chroma_url``): Chroma's disk is not ours.
    """

    def __init__(self, settings: Settings) -> None:
        self.limits = settings
        self.disk_path = "" if settings.chroma_url else settings.chroma_path
        self._buckets: dict[str, TokenBucket] = {}
        self._in_flight: Counter[tuple[str, bool]] = Counter()
        self._disk: tuple[float, float] = (0.0, -DISK_CHECK_SECONDS)  # (percent, when)

    def rate(self, key: str) -> None:
        """Counts one RPC against the key's requests per second.

        Raises:
            QuotaExceeded(RATE_LIMITED): the bucket is empty.
        """
        rps = self.limits.rate_limit_rps
        if rps <= 0:
            return
        bucket = self._buckets.get(key)
        if bucket is None:
            burst = self.limits.rate_limit_burst or max(1, int(rps))
            bucket = self._buckets[key] = TokenBucket(rps, burst)
        wait = bucket.take()
        if wait > 0:
            raise QuotaExceeded(
                f"rate limit of {rps:g} requests per second exceeded; retry in {wait:.3f} s",
                reason="RATE_LIMITED",
                retry_delay=wait,
                quota_violations=[
                    QuotaViolation(_subject(key), f"{rps:g} requests per second per key")
                ],
            )

    @contextmanager
    def concurrent(self, key: str, stream: bool) -> Iterator[None]:
        """Holds one of the key's concurrent unary RPCs (or streams) while open.

        Raises:
            QuotaExceeded(QUOTA_EXCEEDED): the key has as many in flight as allowed.
        """
        limit = self.limits.max_streams_per_key if stream else self.limits.max_rpcs_per_key
        slot = (key, stream)
        if limit > 0 and self._in_flight[slot] >= limit:
            what = "streams" if stream else "unary RPCs"
            raise QuotaExceeded(
                f"{limit} concurrent {what} per key are in flight; retry when one ends",
                retry_delay=BUSY_RETRY_SECONDS,
                quota_violations=[
                    QuotaViolation(_subject(key), f"{limit} concurrent {what} per key")
                ],
            )
        self._in_flight[slot] += 1
        try:
            yield
        finally:
            self._in_flight[slot] -= 1
            if not self._in_flight[slot]:
                del self._in_flight[slot]

    def disk_percent(self) -> float:
        """Use of the storage filesystem in percent (0.0 when not watched)."""
        if not self.disk_path:
            return 0.0
        percent, when = self._disk
        now = time.monotonic()
        if now - when >= DISK_CHECK_SECONDS:
            try:
                usage = shutil.disk_usage(self.disk_path)
            except OSError:  # not created yet: nothing stored
                return 0.0
            percent = 100.0 * usage.used / usage.total if usage.total else 0.0
            self._disk = (percent, now)
        return percent

    def check_disk(self) -> None:
        """Refuses a write when the disk is fuller than the read-only threshold.

        Raises:
            QuotaExceeded(STORAGE_FULL): above ``read_only_disk_percent``.
        """
        threshold = self.limits.read_only_disk_percent
        if threshold <= 0:
            return
        percent = self.disk_percent()
        if percent > threshold:
            raise QuotaExceeded(
                f"storage is {percent:.1f}% full, above the read-only threshold of "
                f"{threshold:g}%: writes are refused until space is freed (reads and "
                "deletes work)",
                reason="STORAGE_FULL",
                retry_delay=DISK_RETRY_SECONDS,
                quota_violations=[
                    QuotaViolation("disk", f"writes refused above {threshold:g}% use")
                ],
                metadata={"disk_percent": f"{percent:.1f}", "threshold_percent": threshold},
            )

    def check_collections(self, count: int) -> None:
        """Refuses creating a collection when ``count`` exist already.

        Raises:
            QuotaExceeded(QUOTA_EXCEEDED): at ``max_collections``.
        """
        limit = self.limits.max_collections
        if limit > 0 and count >= limit:
            raise QuotaExceeded(
                f"the server holds its maximum of {limit} collections; delete one first",
                retry_delay=BUSY_RETRY_SECONDS,
                quota_violations=[QuotaViolation("collections", f"{limit} collections")],
                metadata={"limit": limit},
            )

    def check_points(self, collection: str, stored: int, adding: int) -> None:
        """Refuses a batch that could take a collection over its points quota.
        Each point of the batch counts as new (an id that exists already would
        be replaced, but telling them apart costs a read).

        Raises:
            QuotaExceeded(QUOTA_EXCEEDED): ``stored + adding`` above the limit.
        """
        limit = self.limits.max_points_per_collection
        if limit > 0 and stored + adding > limit:
            raise QuotaExceeded(
                f"collections/{collection} holds {stored} points; {adding} more would pass "
                f"its quota of {limit}",
                retry_delay=BUSY_RETRY_SECONDS,
                quota_violations=[
                    QuotaViolation(f"collection:{collection}", f"{limit} points per collection")
                ],
                metadata={"limit": limit, "stored": stored},
            )
