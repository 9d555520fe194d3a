"""RaftHost: a :class:`~dfs.consensus.api.StateMachine` replicated by pysyncobj.

pysyncobj lives only in dfs/consensus: this module (the node, the submit
path), ``snapshot`` (its serializer) and ``membership`` (its membership
changes). What the host adds on top of it:

* **Group commit.** ``submit`` queues the command; a flusher on the asyncio
  loop packs everything queued (up to ``max_batch`` commands / ``max_batch_bytes``)
  into ONE Raft entry - a msgpack list of commands - with at most
  ``max_inflight`` entries in flight; while they are in flight new commands
  gather into the next batch. ``group_commit=False`` sends one entry per
  command with no in-flight cap (for comparison in benchmarks).
* **Exactly-once apply.** The replicated method computes the entry's Raft
  index (``raftLastApplied + 1``) and skips entries at or below
  ``sm.applied_index()`` (journal replay after a restart); the state machine
  stores the index atomically with the effects.
* **Snapshots are the state machine's own** (RocksDB checkpoints), packed for
  pysyncobj's log compaction by ``dfs.consensus.snapshot``.
* **Nothing is acknowledged before it is on disk** (``durability="sync"``, the
  default; docs/design/durability.md). pysyncobj's journal is a
  ``dfs.consensus.journal.DiskJournal``; the node flushes it (one fdatasync for
  everything appended since the last) at the start of every tick, before
  pysyncobj counts an entry for a commit or applies it, and again just before
  pysyncobj waits on its sockets, so a leader's new entries are written while
  its followers write theirs. While it holds unsynced entries the transport
  holds back every message but a leader's AppendEntries (a follower's
  acknowledgement, a vote) until that flush. ``"async"``: the same writes,
  without the fdatasync (a crash of the process loses nothing, a power cut may).
  A journal that cannot be written halts the replica (``_halt``).
* **Membership changes, one at a time, persisted in members.json**: the rules
  and the refusals are ``dfs.consensus.membership``'s; the host runs them on
  its node (``add_member``, ``remove_member``, ``membership``).
* **Deadlines and leadership loss.** pysyncobj may never call back (on a leader
  change, or for entries covered by an installed snapshot), so every submit
  has a deadline (``Unavailable``), and every pending command fails with
  ``NotLeader`` when the node stops being leader. A command that failed that
  way may still have been applied: callers retry with the same request id.

Threads: pysyncobj runs its own tick thread (``autoTick``); ``sm.apply``,
``sm.snapshot`` and ``sm.restore`` run on it, and so does everything that reads
pysyncobj's state (``_on_tick_call``). Futures are resolved on the
asyncio loop via ``call_soon_threadsafe``. pysyncobj's tick thread exits when
the thread that constructed the host exits, so construct the host on a
long-lived thread (normally the main thread running the event loop).

May import: dfs.common, dfs.consensus and pysyncobj; never the packages of the
state machines it hosts (meta, mgmt) nor anything above them.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack
from pysyncobj import FAIL_REASON, SyncObjConf
from pysyncobj.monotonic import monotonic as _pysyncobj_clock

from dfs.common.config import DURABILITY
from dfs.common.errors import InvalidArgument, NotLeader, Unavailable
from dfs.consensus.api import Log, StateMachine
from dfs.consensus.files import CorruptState
from dfs.consensus.journal import DiskJournal
from dfs.consensus.membership import (
    MEMBERS_FILE,
    Busy,
    GroupMembers,
    Membership,
    PeerProgress,
    check_change,
    code_future,
)
from dfs.consensus.node import _Node
from dfs.consensus.snapshot import SNAP_TMP_DIR, SnapshotCodec

__all__ = ["DURABILITY", "MEMBERS_FILE", "SNAP_TMP_DIR", "Busy", "CorruptState", "Membership", "PeerProgress",
           "RaftHost", "check_change", "decode_entry", "encode_entry"]

log = logging.getLogger(__name__)

BIND_RETRIES = 30    # tries to bind the Raft port before the replica halts, saying why
BIND_RETRY_S = 1.0

_ROLE = {0: "follower", 1: "candidate", 2: "leader"}
_LEADER_STATE = 2

LOG_FILE = "raft.log"
STATE_FILE = "raft.state"
DUMP_FILE = "raft.dump"


def encode_entry(commands: list[bytes]) -> bytes:
    """The payload of one Raft entry: a msgpack list of commands."""
    return msgpack.packb(commands, use_bin_type=True)


def decode_entry(payload: bytes) -> list[bytes]:
    return msgpack.unpackb(payload, raw=False)


@dataclass(eq=False)
class _Pending:
    command: bytes
    future: asyncio.Future


@dataclass(eq=False)
class _Batch:
    items: list[_Pending]
    term: int
    timer: asyncio.TimerHandle | None = None
    done: bool = field(default=False)
    sent: float = 0.0  # time.monotonic() when handed to pysyncobj


class RaftHost(Log):
    """One replica of a Raft group hosting ``sm``.

    ``self_address`` and ``peers`` are Raft ``host:port`` addresses (``peers``
    may include ``self_address``); the node binds only ``self_address``.
    Everything pysyncobj stores (journal, dump, snapshot scratch space) goes
    under ``data_dir``; the state machine keeps its own files elsewhere.
    """

    def __init__(
        self,
        sm: StateMachine,
        self_address: str,
        peers: list[str],
        data_dir: str,
        *,
        password: str | None = None,
        election_timeout: tuple[float, float] = (0.4, 0.8),
        heartbeat: float = 0.1,
        leader_fallback_timeout: float = 1.0,
        connection_timeout: float = 60.0,
        connection_retry: float = 0.5,
        group_commit: bool = True,
        max_batch: int = 1024,
        max_batch_bytes: int = 1 << 20,
        max_inflight: int = 2,
        default_timeout: float = 10.0,
        log_compaction_min_entries: int = 5000,
        log_compaction_min_time: float = 300.0,
        durability: str = "sync",
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        if max_batch < 1 or max_inflight < 1:
            raise ValueError("max_batch and max_inflight must be >= 1")
        if durability not in DURABILITY:
            raise ValueError(f"durability must be one of {', '.join(DURABILITY)}, not {durability!r}")
        self.durability = durability
        self.sm = sm
        self.self_address = self_address
        self.data_dir = os.path.abspath(data_dir)
        self._group = GroupMembers(self_address, peers, self.data_dir, 2 * leader_fallback_timeout)
        self.group_commit = group_commit
        self.max_batch = max_batch
        self.max_batch_bytes = max_batch_bytes
        self.max_inflight = max_inflight
        self.default_timeout = default_timeout
        self._loop = loop

        os.makedirs(self.data_dir, exist_ok=True)
        self._snapshots = SnapshotCodec(sm, self.data_dir, startup_members=self._group.take_startup_members,
                                        taken=lambda: self._count("snapshots_taken"),
                                        restored=lambda: self._count("snapshots_restored"))
        dump = os.path.join(self.data_dir, DUMP_FILE)
        if os.path.exists(dump):
            self._snapshots.check(dump)  # pysyncobj would log a damaged dump and go on without it
        self._journal = DiskJournal(os.path.join(self.data_dir, LOG_FILE), os.path.join(self.data_dir, STATE_FILE),
                                    dump, sync=durability == "sync")
        log.info("%s: Raft journal in %s holds entries %s; state machine applied up to %d; durability %s",
                 self_address, self.data_dir,
                 f"{self._journal[0][1]}..{self._journal[-1][1]}" if len(self._journal) else "none",
                 sm.applied_index(), durability)

        self._queue: collections.deque[_Pending] = collections.deque()
        self._inflight: set[_Batch] = set()
        self._flush_scheduled = False
        self._closed = False
        self._fatal: BaseException | None = None
        self.stats = {
            "entries": 0,  # entries handed to pysyncobj
            "commands": 0,  # commands in them
            "snapshots_taken": 0,
            "snapshots_restored": 0,
            "skipped_on_replay": 0,
        }
        self._stats_lock = threading.Lock()
        # Called on the loop for every entry this leader committed: (commands, seconds
        # since it was handed to pysyncobj). Metrics set it; it must be cheap.
        self.on_commit: Callable[[int, float], None] | None = None

        lo, hi = election_timeout
        self.read_lease_s = lo / 2
        # Entries must stay below appendEntriesBatchSizeBytes: pysyncobj sends a
        # bigger single entry in a chunked "transmission" whose end test compares
        # against the command length instead of the pickled length.
        batch_bytes = max(4 * max_batch_bytes, 4 << 20)
        self._max_command = batch_bytes // 2
        conf = SyncObjConf(
            password=password,
            autoTick=True,
            bindAddress=self_address,
            journalFile=self._journal,  # a Journal, not a path: see dfs.consensus.journal
            fullDumpFile=dump,
            serializer=self._snapshots.serialize,
            deserializer=self._load_dump,
            raftMinTimeout=lo,
            raftMaxTimeout=hi,
            appendEntriesPeriod=heartbeat,
            appendEntriesUseBatch=False,
            appendEntriesBatchSizeBytes=batch_bytes,
            connectionTimeout=max(connection_timeout, hi),
            connectionRetryTime=connection_retry,
            leaderFallbackTimeout=leader_fallback_timeout,
            commandsWaitLeader=False,
            dynamicMembershipChange=True,
            logCompactionMinEntries=log_compaction_min_entries,
            logCompactionMinTime=log_compaction_min_time,
            onStateChanged=self._on_state_changed,
            bindRetryTime=BIND_RETRY_S,
            maxBindRetries=BIND_RETRIES,
        )
        try:
            self._node = _Node(self, self_address, self._group.initial_peers, conf, self._journal)
        except BaseException:
            self._journal._destroy()
            raise
        # Calls to run on pysyncobj's tick thread (its state is not thread-safe).
        self._on_tick: collections.deque[Callable[[], None]] = collections.deque()
        self._paused = False  # a leadership transfer holds new entries back
        self._group.bind(self._node, self._on_tick.append, self._on_tick_call, self._get_loop)
        self._node.addOnTickCallback(self._run_on_tick)
        threading.Thread(target=self._watch_bind, name=f"raft-bind {self_address}", daemon=True).start()

    def _watch_bind(self) -> None:
        """pysyncobj retries binding the Raft port and, when it cannot, runs on unbound: the
        replica then looked like a partitioned one (no term, no leader; seen when another
        process took the port of a replica while it was down). Say it, and halt."""
        try:
            self._node.waitBinded()
        except Exception:  # noqa: BLE001 - pysyncobj's SyncObjException('BindError')
            if not self._closed:
                self._halt(OSError(f"cannot bind the Raft address {self.self_address} after "
                                   f"{BIND_RETRIES} tries {BIND_RETRY_S:g}s apart (in use by another process?)"))

    # ----------------------------------------------------------------- apply

    def _apply_entry(self, index: int, payload: bytes) -> list[bytes] | None:
        """Runs on pysyncobj's thread for every committed entry of ours."""
        if index <= self.sm.applied_index():
            with self._stats_lock:
                self.stats["skipped_on_replay"] += 1
            return None
        try:
            return self.sm.apply(index, decode_entry(payload))
        except BaseException as e:  # a non-deterministic failure: this replica is stuck
            self._fatal = e
            log.critical("state machine failed to apply entry %d; replica halted", index, exc_info=True)
            raise

    def _count(self, stat: str) -> None:  # pysyncobj's thread
        with self._stats_lock:
            self.stats[stat] += 1

    def _load_dump(self, filename: str) -> tuple:
        """pysyncobj's deserializer: the dump (at start, or a snapshot received), and the
        journal aligned with it if a stop fell between a dump and its compaction."""
        data = self._snapshots.deserialize(filename)  # (last entry, previous entry, nodes)
        self._journal.align_to_dump(data[1], data[0])
        return data

    def _halt(self, e: BaseException) -> None:  # pysyncobj's thread
        """The journal cannot be written: stop taking part in the group (no answer may claim
        an entry is on disk now), keep failing submits; a restart reads what the disk has."""
        self._fatal = e
        log.critical("%s: %s; replica halted", self.self_address,
                     e if isinstance(e, OSError) and "bind" in str(e) else f"Raft journal failed ({e})")
        loop = self._loop
        if loop is not None:
            try:
                loop.call_soon_threadsafe(self._fail_all, Unavailable, f"replica halted: {e!r}")
            except RuntimeError:  # loop closed
                pass

    # ----------------------------------------------------------------- submit

    async def submit(self, command: bytes, timeout: float | None = None) -> bytes:
        if self._closed:
            raise Unavailable("raft host closed")
        if self._fatal is not None:
            raise Unavailable(f"replica halted: {self._fatal!r}")
        if not self.is_leader:
            raise NotLeader(leader=self.leader or "")
        if len(command) > self._max_command:
            raise InvalidArgument(f"command of {len(command)} bytes exceeds {self._max_command}")
        loop = self._get_loop()
        fut = loop.create_future()
        p = _Pending(bytes(command), fut)
        if self.group_commit:
            self._queue.append(p)
            if not self._flush_scheduled:
                self._flush_scheduled = True
                loop.call_soon(self._flush)
        else:
            self._send(loop, [p])
        try:
            return await asyncio.wait_for(fut, self.default_timeout if timeout is None else timeout)
        except asyncio.TimeoutError:
            raise Unavailable("no commit before the deadline") from None

    async def submit_many(self, commands: list[bytes], timeout: float | None = None) -> list[bytes | Exception]:
        """Submit several commands at once; each gets its result or its exception.

        They join the group-commit queue together (so they share entries) and
        are awaited under one deadline: the batch RPC path, without a waiter
        per command."""
        if self._closed:
            raise Unavailable("raft host closed")
        if self._fatal is not None:
            raise Unavailable(f"replica halted: {self._fatal!r}")
        if not self.is_leader:
            raise NotLeader(leader=self.leader or "")
        loop = self._get_loop()
        futs = []
        out: list[bytes | Exception | None] = [None] * len(commands)
        pending = []
        for i, command in enumerate(commands):
            if len(command) > self._max_command:
                out[i] = InvalidArgument(f"command of {len(command)} bytes exceeds {self._max_command}")
                continue
            fut = loop.create_future()
            futs.append((i, fut))
            pending.append(_Pending(bytes(command), fut))
        if self.group_commit:
            self._queue.extend(pending)
            if pending and not self._flush_scheduled:
                self._flush_scheduled = True
                loop.call_soon(self._flush)
        else:
            for p in pending:
                self._send(loop, [p])
        if futs:
            done, not_done = await asyncio.wait([f for _, f in futs],
                                                timeout=self.default_timeout if timeout is None else timeout)
            for f in not_done:
                f.cancel()
        for i, f in futs:
            if f.cancelled():
                out[i] = Unavailable("no commit before the deadline")
            elif f.exception() is not None:
                out[i] = f.exception()
            else:
                out[i] = f.result()
        return out

    def _get_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._queue:
            return
        if not self.is_leader:
            self._fail_queued(NotLeader, self.leader or "")
            return
        if self._paused:
            return  # the transfer resumes the flush when it ends
        loop = self._get_loop()
        while self._queue and len(self._inflight) < self.max_inflight:
            items: list[_Pending] = []
            size = 0
            while self._queue and len(items) < self.max_batch:
                p = self._queue[0]
                if p.future.done():  # timed out or cancelled before it was sent
                    self._queue.popleft()
                    continue
                if items and size + len(p.command) > self.max_batch_bytes:
                    break
                self._queue.popleft()
                items.append(p)
                size += len(p.command) + 8
            if items:
                self._send(loop, items)

    def _send(self, loop: asyncio.AbstractEventLoop, items: list[_Pending]) -> None:
        batch = _Batch(items, self.term, sent=time.monotonic())
        self._inflight.add(batch)
        # Free the slot at the latest deadline even if pysyncobj never calls back.
        batch.timer = loop.call_later(self.default_timeout + 1.0, self._release, batch)
        for p in items:
            p.future.add_done_callback(lambda _f, b=batch: self._maybe_release(b))
        with self._stats_lock:
            self.stats["entries"] += 1
            self.stats["commands"] += len(items)

        def callback(res: Any, err: int) -> None:  # pysyncobj's thread
            try:
                loop.call_soon_threadsafe(self._on_batch_done, batch, res, err)
            except RuntimeError:  # loop closed
                pass

        payload = encode_entry([p.command for p in items])
        try:
            self._node._apply_entry(payload, callback=callback)
        except BlockingIOError:
            pass  # the wake-up pipe is full: the command is queued and the tick thread is awake

    def _on_batch_done(self, batch: _Batch, res: Any, err: int) -> None:
        if batch.done:
            return
        if err == FAIL_REASON.SUCCESS and isinstance(res, list) and len(res) == len(batch.items):
            for p, r in zip(batch.items, res):
                if not p.future.done():
                    p.future.set_result(r)
            if self.on_commit is not None:
                self.on_commit(len(batch.items), time.monotonic() - batch.sent)
        elif err == FAIL_REASON.SUCCESS:
            self._fail_batch(batch, Unavailable, "entry applied without results")
        elif not self.is_leader:
            self._fail_batch(batch, NotLeader, self.leader or "")
        else:
            self._fail_batch(batch, Unavailable, f"pysyncobj fail reason {err}")
        self._release(batch)

    def _fail_batch(self, batch: _Batch, exc: type, detail: str) -> None:
        for p in batch.items:
            if not p.future.done():
                p.future.set_exception(self._make_exc(exc, detail))

    @staticmethod
    def _make_exc(exc: type, detail: str) -> Exception:
        if exc is NotLeader:
            return NotLeader("leadership lost; outcome unknown", leader=detail)
        return exc(detail)

    def _maybe_release(self, batch: _Batch) -> None:
        if not batch.done and all(p.future.done() for p in batch.items):
            self._release(batch)

    def _release(self, batch: _Batch) -> None:
        if batch.done:
            return
        batch.done = True
        if batch.timer is not None:
            batch.timer.cancel()
        self._inflight.discard(batch)
        if self._queue and not self._flush_scheduled:
            self._flush_scheduled = True
            self._get_loop().call_soon(self._flush)

    def _fail_queued(self, exc: type, detail: str) -> None:
        while self._queue:
            p = self._queue.popleft()
            if not p.future.done():
                p.future.set_exception(self._make_exc(exc, detail))

    def _fail_all(self, exc: type, detail: str) -> None:
        for batch in list(self._inflight):
            self._fail_batch(batch, exc, detail)
            self._release(batch)
        self._fail_queued(exc, detail)

    def _on_state_changed(self, old: int, new: int) -> None:  # pysyncobj's thread
        if old == _LEADER_STATE and new != _LEADER_STATE and self._loop is not None:
            log.info("%s stepped down (term %d)", self.self_address, self.term)
            try:
                self._loop.call_soon_threadsafe(self._on_lost_leadership)
            except RuntimeError:
                pass

    def _on_lost_leadership(self) -> None:
        if not self.is_leader:
            self._fail_all(NotLeader, self.leader or "")

    # ------------------------------------------------------------- properties

    @property
    def is_leader(self) -> bool:
        return self._node._isLeader()

    def leader_ready(self) -> bool:
        """This replica leads and applied its term's first entry (pysyncobj's no-op): every
        entry committed before it, by any leader, is applied here."""
        node = self._node
        if not node._isLeader():
            return False
        noop = getattr(node, "_SyncObj__noopIDx", None)
        return noop is not None and node.raftLastApplied >= noop

    def read_lease(self) -> bool:
        """True while this leader may serve reads from its applied state (a lease read):

        * it applied its term's first entry (pysyncobj's no-op), so every entry committed
          by an earlier leader is in the state it reads;
        * a majority (itself included) answered its AppendEntries within ``read_lease_s``
          (half the shortest election timeout): a follower votes for no one within the
          shortest election timeout of its last answer to its leader (leader stickiness,
          ``_Node._dfs_ignore_vote``), so no new leader can have been elected and have
          committed since those answers (message delays under half that timeout assumed).

        ``is_leader`` alone is pysyncobj's view, updated on its tick thread: a leader cut off
        from the others (paused, partitioned, starved of CPU) keeps it until its next tick
        past ``leader_fallback_timeout`` (1 s) while a new leader already commits, and reads
        it served meanwhile were stale (a listing missed entries acknowledged to another
        client: seen in ``dfs bench client`` on a loaded machine). Reads here are never answered from
        pysyncobj's state while a tick holds it: the dicts are read as they are (a change of
        membership meanwhile answers False, and the caller tries again)."""
        node = self._node
        if not self.leader_ready():
            return False
        try:
            others = list(node._SyncObj__otherNodes)
            if not others:
                return True
            heard = node._SyncObj__lastResponseTime
            since = _pysyncobj_clock() - self.read_lease_s  # its clock, not time.monotonic's
            fresh = 1 + sum(1 for n in others if heard.get(n, 0.0) > since)
        except RuntimeError:  # changed under us by the tick thread
            return False
        return 2 * fresh > len(others) + 1

    @property
    def leader(self) -> str | None:
        node = self._node._getLeader()
        return None if node is None else node.address

    @property
    def term(self) -> int:
        return self._node.raftCurrentTerm

    @property
    def commit_index(self) -> int:
        return self._node.raftCommitIndex

    @property
    def applied_index(self) -> int:
        """pysyncobj's last applied Raft index (includes no-op entries)."""
        return self._node.raftLastApplied

    @property
    def role(self) -> str:
        return _ROLE.get(getattr(self._node, "_SyncObj__raftState"), "unknown")

    def status(self) -> dict:
        for attempt in range(5):  # getStatus iterates dicts the tick thread may be changing
            try:
                st = self._node.getStatus()
                break
            except RuntimeError:
                if attempt == 4:
                    raise
        with self._stats_lock:
            stats = dict(self.stats)
        journal = self._journal.stats
        return {
            "self": self.self_address,
            "role": self.role,
            "leader": self.leader,
            "term": self.term,
            "commit_index": self.commit_index,
            "applied_index": self.applied_index,
            "sm_applied_index": self.sm.applied_index(),
            "log_len": st["log_len"],
            "has_quorum": st["has_quorum"],
            "leader_ready": self.leader_ready(),
            "peers": {
                str(k[len("partner_node_status_server_"):]): v == 2
                for k, v in st.items() if k.startswith("partner_node_status_server_")
            },
            "queued": len(self._queue),
            "inflight": len(self._inflight),
            "halted": self._fatal is not None,
            "durability": self.durability,
            "journal_syncs": journal["syncs"],  # fdatasyncs of appended entries (durability "sync")
            "journal_synced_entries": journal["synced_entries"],  # entries they covered
            # entries pysyncobj dropped from a follower's log without a conflict, kept on disk
            "journal_kept_tail": journal["kept_tail"],
            # ... and of those, entries given back to its log after the message (Raft's rule)
            "journal_restored_tail": journal["restored_tail"],
            **stats,
        }

    async def wait_leader(self, timeout: float = 10.0) -> str:
        """Wait until a leader is known (to this node); return its address."""
        deadline = time.monotonic() + timeout
        while True:
            leader = self.leader
            if leader is not None:
                return leader
            if time.monotonic() >= deadline:
                raise Unavailable(f"no leader within {timeout}s")
            await asyncio.sleep(0.02)

    # ----------------------------------------------------- leadership transfer

    def _run_on_tick(self) -> None:  # pysyncobj's thread
        self._group.take_startup_members()  # the first tick's dump load is over (or there was none)
        while self._on_tick:
            fn = self._on_tick.popleft()
            try:
                fn()
            except Exception:  # never break the tick
                log.exception("on-tick call failed")
        try:
            self._group.persist_if_changed()
        except Exception:  # never break the tick
            log.exception("persisting the membership failed")
        # Last thing before pysyncobj waits on its sockets: a leader's new entries go to
        # disk while its followers write theirs (the AppendEntries went out already).
        self._node.sync_journal()

    async def _on_tick_call(self, fn: Callable[[], Any], timeout: float = 5.0) -> Any:
        """Run ``fn`` on pysyncobj's thread (where its state may be read); its result."""
        loop = self._get_loop()
        fut = loop.create_future()

        def run() -> None:  # pysyncobj's thread
            try:
                res, exc = fn(), None
            except Exception as e:  # noqa: BLE001 - handed to the caller
                res, exc = None, e

            def done() -> None:
                if not fut.done():
                    if exc is not None:
                        fut.set_exception(exc)
                    else:
                        fut.set_result(res)
            try:
                loop.call_soon_threadsafe(done)
            except RuntimeError:
                pass

        self._on_tick.append(run)
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise Unavailable("the Raft thread did not answer") from None

    async def transfer_leadership(self, to: str | None = None, timeout: float = 10.0) -> str:
        """Hand this leader's role to ``to`` (a peer's Raft address; None: the most
        caught-up connected peer) with Raft's TimeoutNow; return the new leader.

        While it runs, new commands wait in the queue (no new entries), so the
        target can catch up with the log; once it holds every entry, it is
        told to start an election at once, wins it (its log is complete), and
        this node steps down: the queued commands then fail with NotLeader and
        their callers retry at the new leader (same request ids). A refused or
        lost transfer is retried until ``timeout``; then the queue resumes here
        and ``Unavailable`` is raised. On a follower: NotLeader."""
        if not self.is_leader:
            raise NotLeader(leader=self.leader or "")
        if to is not None and to not in self.peers:
            raise InvalidArgument(f"{to} is not a peer of {self.self_address}")
        loop = self._get_loop()
        deadline = time.monotonic() + timeout
        self._paused = True
        try:
            while time.monotonic() < deadline:
                if not self.is_leader:
                    break
                if self._inflight:  # let the entries already handed to pysyncobj commit first
                    await asyncio.sleep(0.005)
                    continue
                fut, done = code_future(loop)

                self._on_tick.append(lambda: self._node.transferLeadership(to, done))
                try:
                    code = await asyncio.wait_for(fut, max(0.01, deadline - time.monotonic()))
                except TimeoutError:
                    break
                if code != FAIL_REASON.SUCCESS:  # not caught up yet (or not connected): try again
                    await asyncio.sleep(0.02)
                    continue
                # The target was told; wait (up to about an election) for it to take over.
                until = min(deadline, time.monotonic() + 2.0)
                while self.is_leader and time.monotonic() < until:
                    await asyncio.sleep(0.01)
            if self.is_leader:
                raise Unavailable(f"leadership not transferred within {timeout}s")
            return await self.wait_leader(max(0.1, deadline - time.monotonic()))
        finally:
            self._paused = False
            if self._queue and not self._flush_scheduled:
                self._flush_scheduled = True
                loop.call_soon(self._flush)

    # ------------------------------------------------------------- membership

    @property
    def members(self) -> tuple[str, ...]:
        """The group's Raft addresses as this replica works with them (itself included)."""
        return self._group.members

    @property
    def peers(self) -> list[str]:
        return self._group.peers

    async def membership(self) -> Membership:
        """This replica's view of the group (on the leader: each peer's progress)."""
        return await self._group.view()

    async def add_member(self, address: str, timeout: float = 10.0, started: bool = False) -> Membership:
        """Add the replica with Raft address ``address`` (started with ``peers`` = the group, or
        to be started); returns once the change is committed and applied here. A member
        already: no-op. ``started``: the caller saw it answer (see ``check_change``)."""
        return await self._group.change("add", address, timeout, started)

    async def remove_member(self, address: str, timeout: float = 10.0) -> Membership:
        """Take ``address`` out of the group (not this leader: transfer the leadership first);
        returns once the change is committed and applied here. Not a member: no-op."""
        return await self._group.change("remove", address, timeout)

    # ------------------------------------------------------------------ close

    def close(self, timeout: float = 5.0) -> None:
        """Stop pysyncobj (tick thread, sockets, journal) and fail pending submits."""
        if self._closed:
            return
        self._closed = True
        self._node.destroy()
        thread = getattr(self._node, "_SyncObj__thread", None)
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._fail_all(Unavailable, "raft host closed")
        else:
            try:
                loop.call_soon_threadsafe(self._fail_all, Unavailable, "raft host closed")
            except RuntimeError:
                pass

    destroy = close

