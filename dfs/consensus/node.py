"""pysyncobj's node and TCP transport, held to Raft's rules where pysyncobj is not.

``RaftHost`` (dfs.consensus.raft) owns one ``_Node``; this module is the layer
that patches pysyncobj (subclasses and its private names, not a fork):

* the transport holds every answer until the journal's sync covers it, and
  bounds what an unauthenticated connection may buffer;
* every message goes through ``_Node._dfs_on_message``: a follower keeps the
  log tail no entry of an AppendEntries conflicts with, ignores vote requests
  within the shortest election timeout of its last answer to its leader
  (leader stickiness), and logs CRITICAL only when an applied entry is
  replaced (docs/design/durability.md, metadata.md).

May import: pysyncobj, dfs.consensus.journal; nothing above.
"""

from __future__ import annotations

import functools
import logging
import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pysyncobj import SyncObj, SyncObjConf, replicated
from pysyncobj.monotonic import monotonic as _pysyncobj_clock
from pysyncobj.syncobj import _RAFT_STATE
from pysyncobj.tcp_connection import CONNECTION_STATE
from pysyncobj.transport import TCPTransport

from dfs.consensus.journal import DiskJournal, JournalFailed

if TYPE_CHECKING:
    from dfs.consensus.raft import RaftHost

log = logging.getLogger("dfs.consensus.raft")  # its lines were raft's, and operators grep for them

_FOLLOWER = _RAFT_STATE.FOLLOWER


class _Transport(TCPTransport):
    """pysyncobj's TCP transport, holding back every message but a leader's
    AppendEntries while the journal has entries not on disk: a follower's
    acknowledgement, a vote, any answer goes out after the sync that covers what
    it answers for (``_Node.sync_journal``), in the order it was sent. A leader's
    AppendEntries go at once: a leader may replicate an entry before its own
    write is done, it only may not count itself for it (Raft thesis 10.2.1)."""

    def __init__(self, syncObj: _Node, selfNode, otherNodes) -> None:
        self._journal = syncObj._dfs_journal
        self._node = syncObj
        self._held: list[tuple[Any, dict]] = []
        self._auth_logged: dict[str, float] = {}  # peer -> when its failed authentication was last logged
        syncObj._dfs_transport = self
        super().__init__(syncObj, selfNode, otherNodes)

    def setOnMessageReceivedCallback(self, callback) -> None:
        # every message pysyncobj handles goes through _Node._dfs_on_message
        if callback is not None:
            callback = functools.partial(self._node._dfs_on_message, callback)
        super().setOnMessageReceivedCallback(callback)

    # Before an incoming connection names a member of the group (with a password: after
    # the key exchange), pysyncobj buffers whatever length its 4-byte prefix claims (up to
    # 2 GiB, by repeated concatenation) and keeps any number of such connections. Those
    # first messages are a few hundred bytes: more, or too many strangers, is a hostile
    # peer, dropped (docs/design/security.md, "Raft"). A named connection is not bounded.
    PREAUTH_BYTES = 64 << 10
    PREAUTH_CONNECTIONS = 64

    def _onNewIncomingConnection(self, conn) -> None:
        if len(self._unknownConnections) >= self.PREAUTH_CONNECTIONS:
            conn.disconnect()
            return
        super()._onNewIncomingConnection(conn)
        read = conn._TcpConnection__processRead  # pysyncobj's private reader: the patch point

        def bounded_read() -> bool:
            more = read()
            if conn in self._unknownConnections and len(conn._TcpConnection__readBuffer) > self.PREAUTH_BYTES:
                self._unknownConnections.discard(conn)
                conn.disconnect()
                return False
            return more
        conn._TcpConnection__processRead = bounded_read
        self._log_failed_auth(conn)

    AUTH_LOG_EVERY = 60.0  # seconds between two warnings about one peer address

    def _log_failed_auth(self, conn) -> None:
        """pysyncobj drops a connection whose message does not decrypt (or unpickle) without a
        word, so a replica given the wrong Raft password or salt looked like a partition. Say
        it: a complete message that ends the connection unparsed is a failed authentication."""
        parse = conn._TcpConnection__processParseMessage  # pysyncobj's private parser
        sock = conn._TcpConnection__socket
        try:
            peer = "%s:%s" % sock.getpeername()[:2] if sock is not None else "?"
        except OSError:
            peer = "?"

        def logged_parse():
            buf = conn._TcpConnection__readBuffer
            whole = len(buf) >= 4 and len(buf) - 4 >= struct.unpack("i", bytes(buf[:4]))[0]
            message = parse()
            if message is None and whole and conn.state == CONNECTION_STATE.DISCONNECTED:
                now = time.monotonic()
                if now - self._auth_logged.get(peer, -self.AUTH_LOG_EVERY) >= self.AUTH_LOG_EVERY:
                    self._auth_logged[peer] = now
                    log.warning("Raft connection from %s failed authentication: a message that does not "
                                "decrypt with this group's key (a wrong raft password or raft_salt?), dropped",
                                peer)
            return message
        conn._TcpConnection__processParseMessage = logged_parse

    def send(self, node, message) -> bool:
        kind = message.get("type")
        if kind == "request_vote" and self._node._dfs_transfer_until > _pysyncobj_clock():
            message = {**message, "transfer": True}  # asked by the leader: see _Node._dfs_on_message
        if kind != "append_entries" and (self._held or self._journal.dirty):
            self._held.append((node, message))
            return True  # as pysyncobj's own send: "thought to be sent"
        return self._forward(node, message)

    def release(self) -> None:
        held, self._held = self._held, []
        for node, message in held:
            self._forward(node, message)

    def _forward(self, node, message) -> bool:
        if message.get("type") == "next_node_idx":
            self._node._dfs_answered = _pysyncobj_clock()  # an answer to the leader leaves now
        return super().send(node, message)


def _not_routine(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("truncating already-applied log entries")


logging.getLogger("pysyncobj.syncobj").addFilter(_not_routine)  # _Node._dfs_applied_terms says why


class _Node(SyncObj):
    """The pysyncobj object: one replicated method, which applies one entry; its
    journal written (and, durability "sync", synced) before every tick."""

    def __init__(self, host: RaftHost, self_address: str, peers: list[str], conf: SyncObjConf,
                 journal: DiskJournal) -> None:
        self._dfs_host = host
        self._dfs_journal = journal
        self._dfs_transport: _Transport | None = None
        self._dfs_halted = False
        self._dfs_answered = -1e18  # when this follower last sent a leader an answer (pysyncobj's clock)
        self._dfs_transfer_until = -1e18  # until when its vote requests carry a leader's transfer
        self._dfs_sticky = conf.raftMinTimeout
        super().__init__(self_address, peers, conf, transportClass=_Transport)

    def _dfs_on_message(self, receive: Callable[[Any, dict], None], node, message: dict) -> None:
        """pysyncobj's message handler, then Raft's rule for a follower's tail: an
        AppendEntries cuts only from a conflicting entry. pysyncobj cuts the log after
        ``prevLogIdx`` on every message that overlaps it, so a heartbeat or a shorter batch
        dropped entries this follower had acknowledged, and until the leader sent them again
        it voted as if it never had them: with the leader gone in that window it could elect
        a peer lacking entries committed with its help (docs/design/durability.md). The
        journal keeps what was cut (its shadow) and gives it back here, after pysyncobj
        computed its reply and commit index from the message's last entry, as Raft has it."""
        kind = message.get("type")
        if kind == "request_vote" and self._dfs_ignore_vote(message):
            return
        if kind == "timeout_now" and node == self._SyncObj__raftLeader:
            self._dfs_transfer_until = _pysyncobj_clock() + self._dfs_sticky
        commit = self._SyncObj__raftCommitIndex
        applied = self._dfs_applied_terms(message) if kind == "append_entries" else None
        try:
            receive(node, message)
        finally:
            restored = self._dfs_journal.restore_tail()
            if restored:
                self._dfs_restored(restored, commit)
            if applied:
                self._dfs_check_applied(*applied)

    def _dfs_applied_terms(self, message: dict) -> tuple[int, list[int]] | None:
        """(first index, terms) of the applied entries this AppendEntries overlaps. pysyncobj
        logs every such overlap as CRITICAL "truncating already-applied log entries" (silenced
        below): a leader resending what a follower has is routine under load, thousands of
        lines a run. Only a change of an applied entry is worth that word: _dfs_check_applied."""
        lo = message.get("prevLogIdx", -1) + 1
        last = self._SyncObj__raftLastApplied
        if lo <= 0 or lo > last or not len(self._dfs_journal):
            return None
        return lo, [e[2] for e in self._SyncObj__getEntries(lo, last - lo + 1)]

    def _dfs_check_applied(self, lo: int, terms: list[int]) -> None:
        now = [e[2] for e in self._SyncObj__getEntries(lo, len(terms))] if len(self._dfs_journal) else []
        if now != terms:  # same index and term: the same entry (Raft's log matching)
            log.critical("%s: an AppendEntries replaced applied log entries from index %d (terms %s -> %s): "
                         "the state machine may have diverged from the other replicas", self._dfs_host.self_address,
                         lo, terms[:8], now[:8])

    def _dfs_ignore_vote(self, message: dict) -> bool:
        """Leader stickiness (Raft thesis 4.2.3): a follower that answered its leader less
        than the shortest election timeout ago neither votes nor takes the candidate's term.
        ``RaftHost.read_lease`` rests on it: the leader serves reads while a majority
        answered it within half that time, which is only safe if none of them can help
        elect another leader meanwhile; pysyncobj granted any higher term's vote at once.
        The timer runs from when the answer left (held answers wait for the journal's sync),
        so the leader's lease, counted from when it received one, ends first. Exempt: a
        vote asked for by the leader itself (a leadership transfer's ``timeout_now``;
        the candidate marks its requests). A leader or candidate is not sticky: a replica
        that raised its term alone, cut off, rejoins by asking the leader for a vote, which
        makes the leader step down (it then serves no more reads)."""
        if message.get("transfer") or self._SyncObj__raftState != _FOLLOWER:
            return False
        if self._SyncObj__raftLeader is None or message.get("term", 0) <= self._SyncObj__raftCurrentTerm:
            return False
        return _pysyncobj_clock() - self._dfs_answered < self._dfs_sticky

    def _dfs_restored(self, restored: list[tuple[bytes, int, int]], commit: int) -> None:
        # pysyncobj rolled back the membership changes it cut: they are in the log again
        for command, _, _ in restored:
            change = self._SyncObj__parseChangeClusterRequest(command)
            if change is not None:
                self._SyncObj__doChangeCluster(change)
        # a commit index pysyncobj lowered to the shorter log: committed entries never
        # conflict, and they are back
        if self._SyncObj__raftCommitIndex < commit <= self._SyncObj__getCurrentLogIndex():
            self._SyncObj__raftCommitIndex = commit
            self._dfs_journal.setRaftCommitIndex(commit)

    @replicated
    def _apply_entry(self, payload: bytes) -> list[bytes] | None:
        return self._dfs_host._apply_entry(self.raftLastApplied + 1, payload)

    def _onTick(self, timeToWait: float = 0.0) -> None:
        # What the last poll appended (a follower's AppendEntries, a new leader's no-op) is
        # on disk before this tick counts it for a commit, applies it, or answers for it.
        if self.sync_journal():
            super()._onTick(timeToWait)

    def sync_journal(self) -> bool:
        """Flush the journal, then send what waited for it; False: the journal failed (here,
        or writing term and vote) and this replica stops taking part (pysyncobj's thread)."""
        journal = self._dfs_journal
        if journal.failed is None:
            try:
                journal.flush()
                if self._dfs_transport is not None:
                    self._dfs_transport.release()
                return True
            except JournalFailed:
                pass
        if not self._dfs_halted:
            self._dfs_halted = True
            self._dfs_host._halt(journal.failed)
            self.destroy()  # the tick thread stops before its next tick
        return False
