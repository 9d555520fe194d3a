"""Prometheus metrics of one server process (mgmt replica, meta replica, data server).

Each process builds one :class:`Metrics`: its own ``CollectorRegistry`` (nothing
goes to prometheus_client's global registry, so two servers in one test process
do not collide), request counters and latency histograms that the process's
edge observes (:class:`RequestMetrics`), and collectors that read gauges at
scrape time from the objects that own the state (:meth:`Metrics.collect`).
``serve(address)`` exposes the registry over HTTP (``GET /metrics``) on a
daemon thread; scrapes never run on the event loop.

Hot paths pay one histogram observe and one counter increment per request on
children cached by op kind; everything else is computed when scraped. This
module knows nothing of the servers: they hand it callables. docs/design/
operations.md lists what each process exports.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, Info
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import start_http_server
from prometheus_client.process_collector import ProcessCollector

__all__ = ["BATCH_BUCKETS", "LATENCY_BUCKETS", "Metrics", "RequestMetrics", "counter", "gauge", "instrument_raft",
           "raft_families", "split_hostport"]

log = logging.getLogger(__name__)

# 100 us .. 10 s: a metadata read on a warm leader is ~100 us, a Raft commit a few ms,
# a 64 MiB chunk write through a chain of three up to seconds.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0)
# commands per Raft entry (group commit): 1 .. max_batch (1024 by default)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

RESULTS = ("ok", "error", "not_leader")
_MAX_KINDS = 256  # op codes beyond this many distinct kinds share the "unknown" child


def split_hostport(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


def gauge(name: str, doc: str, value: float | None = None, labels: Iterable[str] = (),
          samples: Iterable[tuple[list[str], float]] = ()) -> GaugeMetricFamily:
    """A gauge family for a collector: one value, or labelled samples."""
    labels = list(labels)
    g = GaugeMetricFamily(name, doc, value=value if not labels else None, labels=labels or None)
    for lv, v in samples:
        g.add_metric(lv, v)
    return g


def counter(name: str, doc: str, value: float | None = None, labels: Iterable[str] = (),
            samples: Iterable[tuple[list[str], float]] = ()) -> CounterMetricFamily:
    """A counter family for a collector (``name`` without ``_total``)."""
    labels = list(labels)
    c = CounterMetricFamily(name, doc, value=value if not labels else None, labels=labels or None)
    for lv, v in samples:
        c.add_metric(lv, v)
    return c


def task_failures(failures) -> CounterMetricFamily:
    """``dfs_task_failures_total{task}`` from a ``dfs.common.tasks.Supervisor``'s ``failures``
    (a Counter by task name; passed as such: this module does not import the supervisor)."""
    return counter("dfs_task_failures", "unexpected failures of background tasks (each logged with a "
                   "traceback; the task restarted, or the process exited)", labels=["task"],
                   samples=[([k], v) for k, v in sorted(dict(failures).items())])


class RequestMetrics:
    """Requests by kind: ``<prefix>_requests_total{op,result}`` and ``<prefix>_request_seconds{op}``.

    ``observe(kind, seconds, result)``: ``kind`` is whatever the caller has at hand
    (an op code); ``name(kind)`` turns it into the label once, and the children are
    cached by ``kind``."""

    def __init__(self, registry: CollectorRegistry, prefix: str, what: str,
                 name: Callable[[Hashable], str] = str, results: tuple[str, ...] = RESULTS) -> None:
        self.results = results
        self.total = Counter(f"{prefix}_requests", f"{what} answered, by op and result ({', '.join(results)})",
                             ["op", "result"], registry=registry)
        self.seconds = Histogram(f"{prefix}_request_seconds", f"{what}: time to answer, by op",
                                 ["op"], buckets=LATENCY_BUCKETS, registry=registry)
        self._name = name
        self._children: dict[Hashable, tuple[Any, dict[str, Any]]] = {}
        self._by_name: dict[str, tuple[Any, dict[str, Any]]] = {}

    def _child(self, kind: Hashable) -> tuple[Any, dict[str, Any]]:
        room = len(self._children) < _MAX_KINDS  # garbage op codes must not grow the cache
        op = "unknown"
        if room:
            try:
                op = self._name(kind)
            except (KeyError, ValueError):  # an op code nobody defined
                pass
        c = self._by_name.get(op)  # kinds with one name share children
        if c is None:
            c = self._by_name[op] = (self.seconds.labels(op), {r: self.total.labels(op, r) for r in self.results})
        if room:
            self._children[kind] = c
        return c

    def observe(self, kind: Hashable, seconds: float, result: str = "ok") -> None:
        c = self._children.get(kind)
        if c is None:
            c = self._child(kind)
        c[0].observe(seconds)
        c[1][result].inc()


class _Callback:
    """A collector made of a function that yields metric families."""

    def __init__(self, fn: Callable[[], Iterable[Metric]], what: str) -> None:
        self.fn = fn
        self.what = what

    def collect(self) -> Iterable[Metric]:
        try:
            return list(self.fn())
        except Exception:  # a scrape must never take the process down, nor hide the other metrics
            log.exception("metrics of %s", self.what)
            return []


class Metrics:
    """One process's registry, its identity (``dfs_process_info``) and its HTTP endpoint."""

    def __init__(self, role: str, **labels: Any) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=self.registry)
        Info("dfs_process", "which dfs process this is", registry=self.registry).info(
            {"role": role, **{k: str(v) for k, v in labels.items()}})
        self._httpd = None
        self._thread: threading.Thread | None = None
        self.address: str | None = None

    def requests(self, prefix: str, what: str, name: Callable[[Hashable], str] = str,
                 results: tuple[str, ...] = RESULTS) -> RequestMetrics:
        return RequestMetrics(self.registry, prefix, what, name, results)

    def histogram(self, name: str, doc: str, buckets=LATENCY_BUCKETS) -> Histogram:
        return Histogram(name, doc, buckets=buckets, registry=self.registry)

    def counter(self, name: str, doc: str, labels: Iterable[str] = ()) -> Counter:
        return Counter(name, doc, list(labels), registry=self.registry)

    def collect(self, fn: Callable[[], Iterable[Metric]], what: str = "") -> None:
        """Add families computed at scrape time (on the HTTP thread: ``fn`` may only read
        state that is safe to read from another thread)."""
        self.registry.register(_Callback(fn, what or getattr(fn, "__qualname__", "collector")))

    def serve(self, address: str) -> str:
        """Serve ``GET /metrics`` on ``host:port``; returns the address bound."""
        host, port = split_hostport(address)
        self._httpd, self._thread = start_http_server(port, host, registry=self.registry)
        bound = self._httpd.server_address[1]
        self.address = f"{host}:{bound}" if ":" not in host else f"[{host}]:{bound}"
        log.info("metrics on http://%s/metrics", self.address)
        return self.address

    def close(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None


_ROLES = ("leader", "follower", "candidate")


def raft_families(st: dict) -> list[Metric]:
    """The gauges and counters of one Raft replica, from ``RaftHost.status()``."""
    peers = st.get("peers", {})
    return [
        gauge("dfs_raft_role", "1 for the role this replica has now, 0 for the others", labels=["role"],
              samples=[([r], 1.0 if st["role"] == r else 0.0) for r in _ROLES]),
        gauge("dfs_raft_term", "current Raft term", st["term"]),
        gauge("dfs_raft_commit_index", "highest log index known committed", st["commit_index"]),
        gauge("dfs_raft_applied_index", "highest log index applied (no-op entries included)",
              st["applied_index"]),
        gauge("dfs_raft_state_machine_applied_index", "log index of the last entry the state machine applied "
              "(what a snapshot or a restart resumes from)", st["sm_applied_index"]),
        gauge("dfs_raft_log_entries", "entries in the in-memory Raft log (since the last compaction)",
              st["log_len"]),
        gauge("dfs_raft_has_quorum", "1 if this replica is a leader in touch with a majority", 
              1.0 if st["has_quorum"] else 0.0),
        gauge("dfs_raft_peer_connected", "1 if the Raft connection to the peer is up", labels=["peer"],
              samples=[([p], 1.0 if up else 0.0) for p, up in sorted(peers.items())]),
        gauge("dfs_raft_queued_commands", "commands waiting in the group-commit queue", st["queued"]),
        gauge("dfs_raft_inflight_entries", "entries handed to Raft and not yet applied (group commit)",
              st["inflight"]),
        gauge("dfs_raft_halted", "1 if the state machine failed to apply an entry (replica stuck)",
              1.0 if st["halted"] else 0.0),
        counter("dfs_raft_entries", "entries this replica proposed as leader", st["entries"]),
        counter("dfs_raft_commands", "commands in the entries this replica proposed", st["commands"]),
        counter("dfs_raft_snapshots_taken", "snapshots (log compactions) taken", st["snapshots_taken"]),
        counter("dfs_raft_snapshots_restored", "snapshots installed from the leader", st["snapshots_restored"]),
    ]


def instrument_raft(m: Metrics, host) -> None:
    """Export a ``dfs.consensus.raft.RaftHost``: its status at scrape time, and the
    commit latency and commands per entry of what it proposes (its ``on_commit`` hook)."""
    m.collect(lambda: raft_families(host.status()), "raft")
    seconds = m.histogram("dfs_raft_commit_seconds", "leader: time from handing an entry to Raft until it "
                          "was applied here")
    commands = m.histogram("dfs_raft_entry_commands", "leader: commands per committed entry (group commit)",
                           BATCH_BUCKETS)

    def on_commit(n: int, elapsed: float) -> None:
        seconds.observe(elapsed)
        commands.observe(n)

    host.on_commit = on_commit
