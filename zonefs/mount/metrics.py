"""The Prometheus endpoint of a mount (`-o metrics=HOST:PORT`): `/metrics` in Prometheus' text
format, served by `prometheus_client` on a thread of its own.

Owner of nothing. At each scrape, `MountCollector` asks the trio thread for a snapshot of the
mount's counters (`snapshot`, run there by `trio.from_thread`), so nothing is read while the
loop changes it, and builds every metric from that one snapshot: the numbers of a scrape agree
with each other. Once the mount's loop has ended, a scrape answers no zonefs metrics.

Names follow Prometheus' conventions: `_total` for counters, `_seconds` and `_bytes` units.
No label carries a path, a key or the zone's address: only the request kind.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import trio
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from zonefs.remote.base import LATENCY_BUCKETS

log = logging.getLogger(__name__)


class MountCollector(Collector):
    """The mount's metrics, from one snapshot per scrape (see the module docstring)."""

    def __init__(self, snapshot: Callable[[], Mapping[str, Any]],
                 token: trio.lowlevel.TrioToken) -> None:
        self._snapshot, self._token = snapshot, token

    def collect(self) -> Iterator[Metric]:
        try:
            s = trio.from_thread.run_sync(self._snapshot, trio_token=self._token)
        except trio.RunFinishedError:
            return  # the mount is going away
        yield from _metrics(s)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _metrics(s: Mapping[str, Any]) -> Iterator[Metric]:
    wb, cache = s["writeback"], s["cache"]
    yield _gauge("zonefs_store_up", "1 while the store answers, 0 while it does not",
                 1 if s["store"]["answering"] else 0)
    yield _gauge("zonefs_pending_changes", "changes not yet in the bucket (files, "
                 "directories, deletes)", s["pending"])
    yield _gauge("zonefs_pending_files", "files with changes not yet uploaded",
                 s["dirty_files"])
    yield _gauge("zonefs_pending_bytes", "bytes of files not yet uploaded", s["dirty_bytes"])
    yield _gauge("zonefs_pending_deletes", "deletes not yet applied", s["pending_deletes"])
    yield _gauge("zonefs_oldest_pending_change_seconds",
                 "how long the oldest change waiting for the store has waited",
                 wb["oldest_pending_seconds"])
    yield _gauge("zonefs_refused_changes", "changes the store refused for good (they wait "
                 "for a new change; see zonefs status)", wb["refused"])
    yield _counter("zonefs_uploads", "changes put in the store (uploads, copies, deletes)",
                   wb["uploaded"])
    yield _counter("zonefs_upload_retries", "attempts that failed and are retried",
                   wb["retries"])
    yield _counter("zonefs_conflict_copies", "local changes kept as .conflict copies because "
                   "another writer replaced the file", s["conflicts"])
    yield _counter("zonefs_uploaded_bytes", "bytes sent to the store", s["uploaded_bytes"])
    yield _counter("zonefs_downloaded_bytes", "bytes received from the store",
                   s["downloaded_bytes"])
    yield _gauge("zonefs_cache_bytes", "bytes in the blob cache", cache["cached_bytes"])
    yield _counter("zonefs_cache_hits", "reads of whole objects answered by the blob cache",
                   cache["hits"])
    yield _counter("zonefs_cache_misses", "reads of whole objects the blob cache did not have",
                   cache["misses"])
    asked = cache["hits"] + cache["misses"]
    yield _gauge("zonefs_cache_hit_ratio", "hits / (hits + misses) since the mount started "
                 "(0 before any)", cache["hits"] / asked if asked else 0.0)
    yield _counter("zonefs_exclusive_creates", "O_EXCL creates and mkdirs that took their "
                   "name in the store", s["exclusive_creates"]["made"])
    if s.get("memory"):
        yield _gauge("zonefs_buffer_bytes", "bytes ranged reads hold in memory now (GETs in "
                     "flight, bytes kept for the hash)", s["memory"]["used"])
        yield _gauge("zonefs_buffer_limit_bytes", "what they may hold (max_memory less the "
                     "daemon's own size and the listings' share)", s["memory"]["limit"])
    changes = s["changes"]
    yield _gauge("zonefs_other_mounts", "other mounts of the zone writing change records "
                 "(heard of within the last 2.5 minutes)", changes["other_mounts"])
    yield _counter("zonefs_change_records_written", "change records this mount wrote "
                   "(heartbeats included)", changes["records_written"])
    yield _counter("zonefs_change_records_read", "change records of other mounts applied",
                   changes["records_read"])
    yield _counter("zonefs_change_resyncs", "times every cached name was dropped because "
                   "change records may have been missed", changes["resyncs"])
    requests = CounterMetricFamily("zonefs_requests", "requests sent to the store, by kind",
                                   labels=["kind"])
    for kind, n in sorted(s["requests"].items()):
        requests.add_metric([kind], n)
    yield requests
    latency = HistogramMetricFamily("zonefs_request_duration_seconds",
                                    "time from a request's start to its answer, by kind",
                                    labels=["kind"])
    for kind, (buckets, total) in sorted(s["latency"].items()):
        running, cumulative = 0, []
        for bound, n in zip((*map(str, LATENCY_BUCKETS), "+Inf"), buckets, strict=True):
            running += n
            cumulative.append((bound, running))
        latency.add_metric([kind], cumulative, total)
    yield latency


def serve(address: str, port: int, snapshot: Callable[[], Mapping[str, Any]]) -> Any:
    """Serve `/metrics` at `address`:`port` from now on (call it on the trio thread); returns
    the server, whose `shutdown()` stops it. OSError when the address cannot be bound."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MountCollector(snapshot, trio.lowlevel.current_trio_token()))
    server, _thread = start_http_server(port, addr=address, registry=registry)
    log.info("metrics at http://%s:%d/metrics", address, port)
    return server
