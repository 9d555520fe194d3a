"""A Raft group's membership as one replica keeps it: ``members.json``, the view
the admin commands read, and single-server changes one at a time.

* **Changes, one at a time.** ``change`` runs pysyncobj's single-server change
  (``addNodeToCluster``/``removeNodeFromCluster``, which takes effect on every
  replica when the entry is appended, as Raft's single-server changes do) and
  returns once the entry is committed and applied on this leader. pysyncobj
  does not stop a second change while one is uncommitted, and two uncommitted
  single-server changes can leave two disjoint majorities, so a change is
  refused (``Busy``) while another call is running or any membership entry of
  the log is not applied yet. A change that would leave the group without a
  majority of replicas that answer is refused too (``check_change``), and so
  is removing the leader itself (transfer the leadership first).
* **Membership is persisted.** Whenever the set of replicas pysyncobj works
  with changes (a change appended, rolled back, replayed, or a snapshot
  installed), it is written to ``members.json`` in the host's data folder
  (replaced atomically and synced); at the next start that file, not the
  ``peers`` argument, gives the membership, and a damaged one stops the start.
  A new replica starts with ``peers`` = the group as it is now (it joins empty
  and receives the log or a snapshot from the leader once it is added).

``GroupMembers`` reads pysyncobj's state only on pysyncobj's tick thread,
through the host's on-tick calls (``RaftHost`` owns the node and the thread).

May import: dfs.common.errors, dfs.consensus.files; pysyncobj (the consensus package is where it lives).
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pysyncobj import FAIL_REASON, SyncObj
from pysyncobj.syncobj import _COMMAND_TYPE

from dfs.common.errors import DfsError, InvalidArgument, NotLeader, Retryable, Unavailable
from dfs.consensus.files import CorruptState, write_atomic

log = logging.getLogger(__name__)

MEMBERS_FILE = "members.json"
_MEMBERSHIP = bytes([_COMMAND_TYPE.MEMBERSHIP])


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


def code_future(loop: asyncio.AbstractEventLoop):
    """(a future on ``loop``, a pysyncobj callback ``(result, code)`` that sets it to the code
    from pysyncobj's thread; a closed loop is ignored)."""
    fut = loop.create_future()

    def done(_res, code) -> None:  # pysyncobj's thread
        try:
            loop.call_soon_threadsafe(lambda: fut.done() or fut.set_result(code))
        except RuntimeError:
            pass

    return fut, done


def read_members(path: str) -> list[str] | None:
    """The membership ``members.json`` holds (None: no file; damaged: ``CorruptState``,
    never the cluster file's peers in its place)."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return None
    try:
        members = json.loads(raw).get("members")
    except (ValueError, AttributeError):
        members = None
    if not isinstance(members, list) or not members or not all(isinstance(m, str) for m in members):
        raise CorruptState(f"{path} is damaged ({len(raw)} bytes, no list of members)")
    return members


class GroupMembers:
    """The membership of the replica at ``self_address``: from ``members.json`` in
    ``data_dir`` if there is one, else ``peers`` (the caller's, from the cluster file).
    ``peers`` after construction is what the pysyncobj node starts with; ``bind`` it
    to the node once that exists."""

    def __init__(self, self_address: str, peers: list[str], data_dir: str, live_window: float) -> None:
        self.self_address = self_address
        self._path = os.path.join(data_dir, MEMBERS_FILE)
        saved = read_members(self._path)
        if saved is not None:  # the membership as the log left it beats the caller's (cluster file)
            peers = saved
        self.initial_peers = [p for p in dict.fromkeys(peers) if p != self_address]
        self._members: tuple[str, ...] = tuple(sorted([self_address, *self.initial_peers]))
        self._persisted: frozenset[str] | None = frozenset(self.initial_peers) if saved is not None else None
        # pysyncobj's dump (loaded on its first tick) carries the membership of its compaction,
        # which may be older than members.json: at that load, the saved one wins.
        self._startup: list[str] | None = [self_address, *self.initial_peers] if saved is not None else None
        # a peer silent for longer does not count as answering (membership checks); twice the
        # fallback timeout so that a loaded machine's slow answer is not taken for a dead peer
        self._live_window = live_window
        self.changing = False  # a change call is running
        self._node: SyncObj | None = None

    def bind(self, node: SyncObj, on_tick: Callable[[Callable[[], None]], None],
             call_on_tick: Callable[[Callable[[], Any]], Awaitable[Any]],
             loop: Callable[[], asyncio.AbstractEventLoop]) -> None:
        """The node, how to queue a call on its tick thread, how to await one's result, and
        the host's loop. Writes ``members.json`` if there was none."""
        self._node = node
        self._on_tick = on_tick
        self._call = call_on_tick
        self._loop = loop
        if self._persisted is None:
            self.persist(frozenset(self.initial_peers))

    @property
    def members(self) -> tuple[str, ...]:
        return self._members

    @property
    def peers(self) -> list[str]:
        return [m for m in self._members if m != self.self_address]

    # ------------------------------------------------------------ pysyncobj's thread
    def take_startup_members(self) -> list[str] | None:
        """The saved membership that replaces the first loaded dump's (once; None after)."""
        members, self._startup = self._startup, None
        return members

    def persist_if_changed(self) -> None:
        """Once per tick: persist the membership if pysyncobj's changed (an entry appended,
        rolled back, replayed, or a snapshot installed)."""
        others = frozenset(n.address for n in self._node._SyncObj__otherNodes)
        if others != self._persisted:
            self.persist(others)

    def persist(self, others: frozenset[str]) -> None:
        """Write the membership (atomically) and publish it; pysyncobj's thread or ``bind``."""
        members = tuple(sorted([self.self_address, *others]))
        write_atomic(self._path, json.dumps({"self": self.self_address, "members": list(members)}).encode())
        if self._persisted is not None:
            log.info("%s: membership now %s", self.self_address, ", ".join(members))
        self._persisted = others
        self._members = members

    def log_pending(self) -> bool:
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

    def now(self, count_call: bool = True) -> Membership:
        node = self._node
        journal = node._SyncObj__raftLog
        others = node._SyncObj__otherNodes
        leader = node._isLeader()
        peers: list[PeerProgress] = []
        if leader:
            connected = node._SyncObj__connectedNodes
            match = node._SyncObj__raftMatchIndex
            last_seen = node._SyncObj__lastResponseTime
            t = time.monotonic()
            for n in others:
                up = n in connected
                peers.append(PeerProgress(n.address, up, up and t - last_seen.get(n, -1e9) <= self._live_window,
                                          match.get(n, 0)))
        lead = node._getLeader()
        return Membership(self.self_address, tuple(sorted([self.self_address, *(n.address for n in others)])),
                          None if lead is None else lead.address, leader,
                          self.log_pending() or (count_call and self.changing),
                          journal[-1][1] if len(journal) else 0, node.raftCommitIndex,
                          tuple(sorted(peers, key=lambda p: p.address)))

    # ------------------------------------------------------------ the host's loop
    async def view(self) -> Membership:
        return await self._call(self.now)

    async def change(self, op: str, address: str, timeout: float, started: bool = False) -> Membership:
        """``op`` ("add" / "remove") of the replica at Raft ``address``, on this leader."""
        host, sep, port = address.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise InvalidArgument(f"a Raft address is host:port, not {address!r}")
        if self.changing:
            raise Busy("another membership change is running on this leader")
        self.changing = True
        try:
            m = await self._call(lambda: self.now(count_call=False))
            if not m.is_leader:
                raise NotLeader(leader=m.leader or "")
            if (address in m.members) == (op == "add"):
                return m  # done already (a repeat)
            if op == "remove" and address == self.self_address:
                raise InvalidArgument(f"{address} leads the group: transfer the leadership first")
            if m.pending:
                raise Busy("a membership change is not committed yet")
            check_change(m, op, address, started)
            fut, done = code_future(self._loop())
            node = self._node

            def start() -> None:  # pysyncobj's thread: checked again next to the log
                if not node._isLeader():
                    done(None, FAIL_REASON.NOT_LEADER)
                elif self.log_pending():
                    done(None, FAIL_REASON.REQUEST_DENIED)
                elif op == "add":
                    node.addNodeToCluster(address, callback=done)
                else:
                    node.removeNodeFromCluster(address, callback=done)

            log.info("%s: membership change: %s %s", self.self_address, op, address)
            self._on_tick(start)
            try:
                code = await asyncio.wait_for(fut, timeout)
            except TimeoutError:
                raise Unavailable(f"the change ({op} {address}) did not commit within {timeout}s; "
                                  f"it may still commit") from None
            if code == FAIL_REASON.SUCCESS:
                return await self._call(lambda: self.now(count_call=False))
            if code in (FAIL_REASON.NOT_LEADER, FAIL_REASON.LEADER_CHANGED, FAIL_REASON.DISCARDED,
                        FAIL_REASON.MISSING_LEADER):
                lead = node._getLeader()
                raise NotLeader("leadership lost during the membership change; outcome unknown",
                                leader="" if lead is None else lead.address)
            if code == FAIL_REASON.REQUEST_DENIED:
                # pysyncobj refuses until this leader's first entry of its term is applied
                raise Retryable("Raft refused the change for now (a new leader): try again")
            raise Unavailable(f"membership change failed (pysyncobj fail reason {code})")
        finally:
            self.changing = False
