"""RaftHost: a :class:`~dfs.consensus.api.StateMachine` replicated by pysyncobj.

pysyncobj lives only in this module. What the host adds on top of it:

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
* **Snapshots are the state machine's own** (RocksDB checkpoints): the custom
  pysyncobj serializer writes one uncompressed tar holding ``meta.pickle``
  (pysyncobj's ``(lastEntry, prevEntry, clusterNodes)`` tuple plus the state
  machine's applied index) and the ``state/`` directory from
  ``sm.snapshot``. The deserializer restores the state machine from it only
  when the snapshot is ahead of the state machine (a wiped or lagging replica
  receiving the leader's snapshot); at a restart the local state is already at
  or past the local dump and is kept.
* **Membership changes, one at a time.** ``add_member``/``remove_member`` run
  pysyncobj's single-server change (``addNodeToCluster``/``removeNodeFromCluster``,
  which takes effect on every replica when the entry is appended, as Raft's
  single-server changes do) and return once the entry is committed and
  applied on this leader. pysyncobj does not stop a second change while one
  is uncommitted, and two uncommitted single-server changes can leave two
  disjoint majorities, so the host refuses (``Busy``) a change while another
  call is running or any membership entry of its log is not applied yet. It
  also refuses a change that would leave the group without a majority of
  replicas that answer (see ``check_change``), and removing itself (transfer
  the leadership first).
* **Membership is persisted.** Whenever the set of replicas pysyncobj works
  with changes (a change appended, rolled back, replayed, or a snapshot
  installed), the host writes it to ``members.json`` in ``data_dir``; at the
  next start that file, not the ``peers`` argument, gives the membership. A
  new replica starts with ``peers`` = the group as it is now (it joins empty
  and receives the log or a snapshot from the leader once it is added).
* **Deadlines and leadership loss.** pysyncobj may never call back (on a leader
  change, or for entries covered by an installed snapshot), so every submit
  has a deadline (``Unavailable``), and every pending command fails with
  ``NotLeader`` when the node stops being leader. A command that failed that
  way may still have been applied: callers retry with the same request id.

Threads: pysyncobj runs its own tick thread (``autoTick``); ``sm.apply``,
``sm.snapshot`` and ``sm.restore`` run on it. Futures are resolved on the
asyncio loop via ``call_soon_threadsafe``. pysyncobj's tick thread exits when
the thread that constructed the host exits, so construct the host on a
long-lived thread (normally the main thread running the event loop).
"""

from __future__ import annotations

import asyncio
import collections
import io
import logging
import os
import pickle
import shutil
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import errno
import json

import msgpack
from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, replicated
from pysyncobj.syncobj import _COMMAND_TYPE

from dfs.common.errors import DfsError, InvalidArgument, NotLeader, Retryable, Unavailable
from dfs.consensus.api import Log, StateMachine

__all__ = ["Busy", "Membership", "RaftHost", "check_change", "decode_entry", "encode_entry"]

log = logging.getLogger(__name__)

_ROLE = {0: "follower", 1: "candidate", 2: "leader"}
_LEADER_STATE = 2

JOURNAL_FILE = "raft.journal"
DUMP_FILE = "raft.dump"
SNAP_TMP_DIR = "snap-tmp"
MEMBERS_FILE = "members.json"
_MEMBERSHIP = bytes([_COMMAND_TYPE.MEMBERSHIP])
_META_MEMBER = "meta.pickle"
_STATE_MEMBER = "state"
_SNAPSHOT_FORMAT = 1


class Busy(DfsError):
    """A membership change is in flight (EBUSY): let it finish first."""

    errno_value = errno.EBUSY


@dataclass(frozen=True, slots=True)
class PeerProgress:
    address: str  # Raft address
    connected: bool
    live: bool  # connected and answered within twice the leader fallback timeout (leader's view)
    match_index: int  # leader: highest log index known replicated there (0: unknown)


@dataclass(frozen=True, slots=True)
class Membership:
    """A replica's view of its group (taken on pysyncobj's thread, so consistent)."""

    self_address: str
    members: tuple[str, ...]  # Raft addresses, this replica included, sorted
    leader: str | None
    is_leader: bool
    pending: bool  # a membership entry of the log is not applied yet, or a change call runs here
    last_index: int
    commit_index: int
    peers: tuple[PeerProgress, ...] = ()  # on the leader: every other member

    def live(self) -> set[str]:
        """The members that answer, as the leader sees it (itself included)."""
        return {self.self_address} | {p.address for p in self.peers if p.live}


def check_change(m: Membership, op: str, address: str, started: bool = False) -> None:
    """Raise unless ``op`` ("add" / "remove") of ``address`` keeps a majority of answering
    replicas. Adding grows the group to N+1: the answering replicas, the new one counted
    only if ``started`` (the caller saw it answer), must be a majority of N+1. Removing needs
    the replicas that stay and answer to be a majority of the replicas that stay. Never the
    last replica."""
    members = set(m.members)
    live = m.live()
    if op == "add":
        n = len(members) + 1
        up = len(live) + (1 if started else 0)
        if up * 2 <= n:
            raise Busy(f"adding {address} would leave {up} answering replicas of {n}, not a majority "
                       f"(start it first, bring the others back, or remove a dead one first)")
        return
    rest = members - {address}
    if not rest:
        raise InvalidArgument(f"{address} is the only replica of the group")
    up = len(live & rest)
    if up * 2 <= len(rest):
        down = sorted(rest - live)
        raise Busy(f"removing {address} would leave {up} answering replicas of {len(rest)}, not a majority "
                   f"({', '.join(down)} do not answer)")


def encode_entry(commands: list[bytes]) -> bytes:
    """The payload of one Raft entry: a msgpack list of commands."""
    return msgpack.packb(commands, use_bin_type=True)


def decode_entry(payload: bytes) -> list[bytes]:
    return msgpack.unpackb(payload, raw=False)


def _code_future(loop: asyncio.AbstractEventLoop):
    """(a future on ``loop``, a pysyncobj callback ``(result, code)`` that sets it to the code
    from pysyncobj's thread; a closed loop is ignored)."""
    fut = loop.create_future()

    def done(_res, code) -> None:  # pysyncobj's thread
        try:
            loop.call_soon_threadsafe(lambda: fut.done() or fut.set_result(code))
        except RuntimeError:
            pass

    return fut, done


class _Node(SyncObj):
    """The pysyncobj object: one replicated method, which applies one entry."""

    def __init__(self, host: RaftHost, self_address: str, peers: list[str], conf: SyncObjConf) -> None:
        self._dfs_host = host
        super().__init__(self_address, peers, conf)

    @replicated
    def _apply_entry(self, payload: bytes) -> list[bytes] | None:
        return self._dfs_host._apply_entry(self.raftLastApplied + 1, payload)


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
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        if max_batch < 1 or max_inflight < 1:
            raise ValueError("max_batch and max_inflight must be >= 1")
        self.sm = sm
        self.self_address = self_address
        self.data_dir = os.path.abspath(data_dir)
        self._members_path = os.path.join(self.data_dir, MEMBERS_FILE)
        saved = _read_members(self._members_path)
        if saved is not None:  # the membership as the log left it beats the caller's (cluster file)
            peers = saved
        peers = [p for p in dict.fromkeys(peers) if p != self_address]
        self._members: tuple[str, ...] = tuple(sorted([self_address, *peers]))
        self._persisted: frozenset[str] | None = frozenset(peers) if saved is not None else None
        # pysyncobj's dump (loaded on its first tick) carries the membership of its compaction,
        # which may be older than members.json: at that load, the saved one wins.
        self._startup_members: list[str] | None = [self_address, *peers] if saved is not None else None
        # a peer silent for longer does not count as answering (membership checks); twice the
        # fallback timeout so that a loaded machine's slow answer is not taken for a dead peer
        self._live_window = 2 * leader_fallback_timeout
        self.group_commit = group_commit
        self.max_batch = max_batch
        self.max_batch_bytes = max_batch_bytes
        self.max_inflight = max_inflight
        self.default_timeout = default_timeout
        self._loop = loop

        os.makedirs(self.data_dir, exist_ok=True)
        self._snap_dir = os.path.join(self.data_dir, SNAP_TMP_DIR)
        shutil.rmtree(self._snap_dir, ignore_errors=True)  # leftovers of a crash
        os.makedirs(self._snap_dir)

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
        # Entries must stay below appendEntriesBatchSizeBytes: pysyncobj sends a
        # bigger single entry in a chunked "transmission" whose end test compares
        # against the command length instead of the pickled length.
        batch_bytes = max(4 * max_batch_bytes, 4 << 20)
        self._max_command = batch_bytes // 2
        conf = SyncObjConf(
            password=password,
            autoTick=True,
            bindAddress=self_address,
            journalFile=os.path.join(self.data_dir, JOURNAL_FILE),
            fullDumpFile=os.path.join(self.data_dir, DUMP_FILE),
            serializer=self._serialize,
            deserializer=self._deserialize,
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
        )
        self._node = _Node(self, self_address, peers, conf)
        # Calls to run on pysyncobj's tick thread (its state is not thread-safe).
        self._on_tick: collections.deque[Callable[[], None]] = collections.deque()
        self._node.addOnTickCallback(self._run_on_tick)
        self._paused = False  # a leadership transfer holds new entries back
        self._changing = False  # a membership change call is running
        if self._persisted is None:
            self._persist_members(frozenset(peers))

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

    # -------------------------------------------------------------- snapshots

    def _serialize(self, tmp_filename: str, data: tuple) -> None:
        """pysyncobj's log compaction: ``data`` is (lastEntry, prevEntry, nodes)."""
        work = tempfile.mkdtemp(dir=self._snap_dir)
        try:
            state = os.path.join(work, _STATE_MEMBER)
            applied = self.sm.applied_index()  # same thread as apply: consistent
            self.sm.snapshot(state)
            meta = pickle.dumps(
                {"format": _SNAPSHOT_FORMAT, "data": tuple(data), "sm_applied": applied},
                protocol=pickle.HIGHEST_PROTOCOL,
            )
            with open(tmp_filename, "wb") as f:
                with tarfile.open(fileobj=f, mode="w") as tar:
                    info = tarfile.TarInfo(_META_MEMBER)
                    info.size = len(meta)
                    info.mtime = int(time.time())
                    tar.addfile(info, io.BytesIO(meta))
                    tar.add(state, arcname=_STATE_MEMBER)
                f.flush()
                os.fsync(f.fileno())
            with self._stats_lock:
                self.stats["snapshots_taken"] += 1
        except BaseException:
            log.exception("snapshot failed")
            raise
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _deserialize(self, filename: str) -> tuple:
        """Load a dump (at startup, or one received from the leader)."""
        with tarfile.open(filename, mode="r") as tar:
            meta = pickle.loads(tar.extractfile(_META_MEMBER).read())
            if meta.get("format") != _SNAPSHOT_FORMAT:
                raise ValueError(f"unknown snapshot format {meta.get('format')!r}")
            data = tuple(meta["data"])
            if self._startup_members is not None and len(data) == 4:
                from pysyncobj.node import TCPNode

                data = (*data[:3], {TCPNode(a) for a in self._startup_members})
                self._startup_members = None
            if meta["sm_applied"] > self.sm.applied_index():
                work = tempfile.mkdtemp(dir=self._snap_dir)
                try:
                    members = [
                        m for m in tar.getmembers()
                        if m.name == _STATE_MEMBER or m.name.startswith(_STATE_MEMBER + "/")
                    ]
                    tar.extractall(work, members=members, filter="data")
                    log.info(
                        "restoring state machine from snapshot (applied %d -> %d)",
                        self.sm.applied_index(), meta["sm_applied"],
                    )
                    # restore() may move the directory away; whatever is left is removed.
                    self.sm.restore(os.path.join(work, _STATE_MEMBER))
                finally:
                    shutil.rmtree(work, ignore_errors=True)
                with self._stats_lock:
                    self.stats["snapshots_restored"] += 1
        return data

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
            "peers": {
                str(k[len("partner_node_status_server_"):]): v == 2
                for k, v in st.items() if k.startswith("partner_node_status_server_")
            },
            "queued": len(self._queue),
            "inflight": len(self._inflight),
            "halted": self._fatal is not None,
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
        self._startup_members = None  # the first tick's dump load is over (or there was none)
        while self._on_tick:
            fn = self._on_tick.popleft()
            try:
                fn()
            except Exception:  # never break the tick
                log.exception("on-tick call failed")
        try:
            others = frozenset(n.address for n in self._node._SyncObj__otherNodes)
            if others != self._persisted:
                self._persist_members(others)
        except Exception:  # never break the tick
            log.exception("persisting the membership failed")

    def _persist_members(self, others: frozenset[str]) -> None:
        """Write the membership (atomically) and publish it; pysyncobj's thread or __init__."""
        members = tuple(sorted([self.self_address, *others]))
        tmp = self._members_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"self": self.self_address, "members": list(members)}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._members_path)
        if self._persisted is not None:
            log.info("%s: membership now %s", self.self_address, ", ".join(members))
        self._persisted = others
        self._members = members

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
                fut, done = _code_future(loop)

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
        return self._members

    @property
    def peers(self) -> list[str]:
        return [m for m in self._members if m != self.self_address]

    def _log_pending(self) -> bool:  # pysyncobj's thread
        """A membership entry of the log is not applied yet (only the tail can hold one)."""
        node = self._node
        journal = node._SyncObj__raftLog
        applied = node.raftLastApplied
        for i in range(len(journal) - 1, -1, -1):
            cmd, idx, _term = journal[i]
            if idx <= applied:
                return False
            if cmd[:1] == _MEMBERSHIP:
                return True
        return False

    def _membership_now(self, count_call: bool = True) -> Membership:  # pysyncobj's thread
        node = self._node
        journal = node._SyncObj__raftLog
        others = node._SyncObj__otherNodes
        leader = node._isLeader()
        peers: list[PeerProgress] = []
        if leader:
            connected = node._SyncObj__connectedNodes
            match = node._SyncObj__raftMatchIndex
            last_seen = node._SyncObj__lastResponseTime
            now = time.monotonic()
            for n in others:
                up = n in connected
                peers.append(PeerProgress(n.address, up, up and now - last_seen.get(n, -1e9) <= self._live_window,
                                          match.get(n, 0)))
        lead = node._getLeader()
        return Membership(self.self_address, tuple(sorted([self.self_address, *(n.address for n in others)])),
                          None if lead is None else lead.address, leader,
                          self._log_pending() or (count_call and self._changing),
                          journal[-1][1] if len(journal) else 0, node.raftCommitIndex,
                          tuple(sorted(peers, key=lambda p: p.address)))

    async def membership(self) -> Membership:
        """This replica's view of the group (on the leader: each peer's progress)."""
        return await self._on_tick_call(self._membership_now)

    async def add_member(self, address: str, timeout: float = 10.0, started: bool = False) -> Membership:
        """Add the replica with Raft address ``address`` (started with ``peers`` = the group, or
        to be started); returns once the change is committed and applied here. A member
        already: no-op. ``started``: the caller saw it answer (see ``check_change``)."""
        return await self._change("add", address, timeout, started)

    async def remove_member(self, address: str, timeout: float = 10.0) -> Membership:
        """Take ``address`` out of the group (not this leader: transfer the leadership first);
        returns once the change is committed and applied here. Not a member: no-op."""
        return await self._change("remove", address, timeout)

    async def _change(self, op: str, address: str, timeout: float, started: bool = False) -> Membership:
        host, sep, port = address.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise InvalidArgument(f"a Raft address is host:port, not {address!r}")
        if self._changing:
            raise Busy("another membership change is running on this leader")
        self._changing = True
        try:
            m = await self._on_tick_call(lambda: self._membership_now(count_call=False))
            if not m.is_leader:
                raise NotLeader(leader=m.leader or "")
            if (address in m.members) == (op == "add"):
                return m  # done already (a repeat)
            if op == "remove" and address == self.self_address:
                raise InvalidArgument(f"{address} leads the group: transfer the leadership first")
            if m.pending:
                raise Busy("a membership change is not committed yet")
            check_change(m, op, address, started)
            loop = self._get_loop()
            fut, done = _code_future(loop)

            def start() -> None:  # pysyncobj's thread: checked again next to the log
                if not self._node._isLeader():
                    done(None, FAIL_REASON.NOT_LEADER)
                elif self._log_pending():
                    done(None, FAIL_REASON.REQUEST_DENIED)
                elif op == "add":
                    self._node.addNodeToCluster(address, callback=done)
                else:
                    self._node.removeNodeFromCluster(address, callback=done)

            log.info("%s: membership change: %s %s", self.self_address, op, address)
            self._on_tick.append(start)
            try:
                code = await asyncio.wait_for(fut, timeout)
            except TimeoutError:
                raise Unavailable(f"the change ({op} {address}) did not commit within {timeout}s; "
                                  f"it may still commit") from None
            if code == FAIL_REASON.SUCCESS:
                return await self._on_tick_call(lambda: self._membership_now(count_call=False))
            if code in (FAIL_REASON.NOT_LEADER, FAIL_REASON.LEADER_CHANGED, FAIL_REASON.DISCARDED,
                        FAIL_REASON.MISSING_LEADER):
                raise NotLeader("leadership lost during the membership change; outcome unknown",
                                leader=self.leader or "")
            if code == FAIL_REASON.REQUEST_DENIED:
                # pysyncobj refuses until this leader's first entry of its term is applied
                raise Retryable("Raft refused the change for now (a new leader): try again")
            raise Unavailable(f"membership change failed (pysyncobj fail reason {code})")
        finally:
            self._changing = False

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


def _read_members(path: str) -> list[str] | None:
    """The membership ``members.json`` holds (None: no file)."""
    try:
        with open(path) as f:
            d = json.load(f)
    except FileNotFoundError:
        return None
    members = d.get("members")
    if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
        raise ValueError(f"{path}: no list of members")
    return members
