"""The Raft journal of one replica, on disk before anything is acknowledged for it.

pysyncobj keeps its log in a ``Journal``; its own file journal is an mmap that
is never flushed, rewritten in place on compaction, with term and vote in a
file written without fsync whose damage reads as "no vote". ``DiskJournal``
replaces it (pysyncobj's journal interface, subclassed, not a fork):

* **Log file** (``raft.log``): a header, then one record per entry
  ``[u32 length][u32 crc32][u64 index][u64 term][command]``, the CRC over
  index, term and command. ``add`` only buffers; ``flush`` writes what was
  added and, with ``sync``, fdatasyncs it: one sync for every entry added since
  the last one (group commit). ``RaftHost`` calls ``flush`` before pysyncobj
  counts or answers for an entry (see ``dfs.consensus.raft``), so an entry is
  acknowledged only once it is on disk.
* **A torn tail is cut, not an error**: reading stops at the first record that
  is incomplete or fails its CRC (what a power cut leaves of writes nobody had
  synced; nothing acknowledged can be there) and the file is truncated to the
  records before it, with a warning. Index gaps, a bad header: ``CorruptState``.
* **Rewrites are atomic**: compaction (``deleteEntriesTo``) and a snapshot
  install (``clear``) write a new file, fsync it, rename it over the old one and
  fsync the directory, after making the dump that replaces the dropped entries
  durable (pysyncobj renames dumps into place without syncing the directory,
  and writes received snapshots without fsync). Synced whatever the
  durability: they are rare, and a power cut must never leave a log without
  its header (async loses a tail of appends; the log still opens). A stop between pysyncobj's dump
  and its compaction (a tick later) leaves the old file: ``align_to_dump``
  completes that compaction at the next start instead of letting pysyncobj
  clear the journal (which dropped the entries after the dump).
* **Only a conflict cuts the log** (Raft's rule): pysyncobj truncates a
  follower's log from ``prevLogIdx`` on every AppendEntries that overlaps it,
  and a message with fewer entries than the follower holds removes acknowledged
  ones. Removed entries leave pysyncobj's view but stay in the file (the
  shadow; buffered ones are written first, a held reply may count them); the
  same entry added again is taken back without a write, a differing one drops
  the rest of the shadow and the next flush cuts the file there. What is left
  of the shadow when the message is handled comes back into the log
  (``restore_tail``, called by ``dfs.consensus.node``; docs/design/durability.md).
* **State file** (``raft.state``): term, vote and commit index as JSON with a
  CRC, replaced atomically (temp file, fsync, rename, directory fsync) and
  always synced; term and vote before pysyncobj sends anything that reflects
  them. Damaged: ``CorruptState``. The commit index is only a hint (it lets a
  restarted replica apply its journal before it hears from a leader), written
  at most once a second and on close, and never read past the log's end.
* A journal of pysyncobj's old format (``raft.journal`` + ``.meta``) is imported
  once, at the first start with this one.

Only pysyncobj's tick thread calls a journal (``RaftHost`` owns the node); the
counters in ``stats`` may be read from elsewhere.

May import: dfs.consensus.files and pysyncobj's journal interface; nothing above.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from typing import Any

import pysyncobj.syncobj as _syncobj
from pysyncobj.journal import Journal

from dfs.consensus.files import CorruptState, fsync_dir, fsync_file, read_state, write_atomic, write_state

log = logging.getLogger(__name__)

MAGIC = b"dfsraft\x01"
_REC = struct.Struct("<IIQQ")  # command length, crc32(index, term, command), index, term
_IT = struct.Struct("<QQ")
LEGACY_FILE = "raft.journal"  # pysyncobj's FileJournal, imported once


def _record(command: bytes, idx: int, term: int) -> bytes:
    it = _IT.pack(idx, term)
    return _REC.pack(len(command), zlib.crc32(command, zlib.crc32(it)), idx, term) + command


class JournalFailed(OSError):
    """A write or sync of the journal failed: the replica must stop (after a failed
    fsync the kernel may have dropped the data; no retry can tell)."""


class DiskJournal(Journal):
    """pysyncobj's ``Journal`` over ``path`` (the log) and ``state_path`` (term, vote,
    commit index). ``sync``: fdatasync at every ``flush`` (durability "sync"); without
    it ``flush`` only writes (the entries survive a crash of the process, not of the
    machine). ``dump_path`` is pysyncobj's full dump, made durable before any entry it
    replaces is dropped from the log."""

    def __init__(self, path: str, state_path: str, dump_path: str, *, sync: bool = True) -> None:
        self.path = path
        self.state_path = state_path
        self.dump_path = dump_path
        self.sync = sync
        self.failed: BaseException | None = None
        self.fsync = os.fdatasync  # tests replace it (count, block, fail)
        self.stats = {"syncs": 0, "synced_entries": 0, "rewrites": 0, "kept_tail": 0, "restored_tail": 0}
        self._dir = os.path.dirname(os.path.abspath(path))
        self._entries: list[tuple[bytes, int, int]] = []
        self._ends: list[int] = []  # file offset after each entry's record
        self._buf = bytearray()  # records not written yet; they belong at self._on_disk
        self._buf_entries = 0
        self._on_disk = 0  # bytes of the file that hold the log's first entries, written
        self._file_len = 0  # bytes in the file (more than _on_disk: a truncation is pending)
        self._shadow: list[tuple[tuple[bytes, int, int], int]] = []  # removed, still in the file
        self._rewrite = False  # the file must be replaced by the log as it is in memory
        self._fd = -1
        legacy = os.path.join(self._dir, LEGACY_FILE)
        if not os.path.exists(path) and os.path.exists(legacy):
            self._import_legacy(legacy)
        state = read_state(state_path) or {}
        self._term = int(state.get("term", 0))
        self._voted_for: str | None = state.get("voted_for")
        self._commit = int(state.get("commit_index", 1))
        self._state_saved = True
        self._open()

    # ------------------------------------------------------------------ reading
    def _open(self) -> None:
        if not os.path.exists(self.path):
            write_atomic(self.path, MAGIC)  # never a log file without its header
        self._fd = os.open(self.path, os.O_RDWR)
        data = _read_all(self._fd)
        if data[:len(MAGIC)] != MAGIC:
            os.close(self._fd)
            self._fd = -1
            raise CorruptState(f"{self.path} is not a dfs Raft log (header {data[:len(MAGIC)]!r})")
        pos = len(MAGIC)
        prev_idx = None
        while pos + _REC.size <= len(data):
            n, crc, idx, term = _REC.unpack_from(data, pos)
            end = pos + _REC.size + n
            if end > len(data):
                break
            command = bytes(data[pos + _REC.size:end])
            if zlib.crc32(command, zlib.crc32(_IT.pack(idx, term))) != crc:
                break
            if prev_idx is not None and idx != prev_idx + 1:
                os.close(self._fd)
                self._fd = -1
                raise CorruptState(f"{self.path}: entry {idx} follows entry {prev_idx} at offset {pos}")
            prev_idx = idx
            self._entries.append((command, idx, term))
            self._ends.append(end)
            pos = end
        if pos < len(data):
            log.warning("%s: cut %d bytes after entry %s: a write that was never synced (torn by a crash)",
                        self.path, len(data) - pos, prev_idx)
            os.ftruncate(self._fd, pos)
            self.fsync(self._fd)
        self._on_disk = self._file_len = pos

    def _import_legacy(self, legacy: str) -> None:
        """pysyncobj's FileJournal (and its .meta) -> this format; then the old files go."""
        from pysyncobj import pickle as spickle
        from pysyncobj.journal import FileJournal

        meta: dict[str, Any] = {}
        if os.path.exists(legacy + ".meta"):
            try:
                with open(legacy + ".meta", "rb") as f:
                    meta = spickle.loads(f.read())
            except Exception as e:  # noqa: BLE001 - any damage is the same refusal
                raise CorruptState(f"{legacy}.meta is damaged: {e!r}") from None
        old = FileJournal(legacy)
        try:
            entries = [old[i] for i in range(len(old))]
        finally:
            old._destroy()
        body = bytearray(MAGIC)
        for command, idx, term in entries:
            body += _record(bytes(command), idx, term)
        write_atomic(self.path, bytes(body))
        write_state(self.state_path, {"term": int(meta.get("currentTerm", 0)),
                                      "voted_for": meta.get("votedForNodeId"),
                                      "commit_index": int(meta.get("raftCommitIndex", 1))})
        os.unlink(legacy)
        if os.path.exists(legacy + ".meta"):
            os.unlink(legacy + ".meta")
        fsync_dir(self._dir)
        log.info("%s: imported %d entries from pysyncobj's journal %s", self.path, len(entries), legacy)

    # ------------------------------------------------------------------ the log
    def add(self, command: bytes, idx: int, term: int) -> None:
        entry = (bytes(command), idx, term)
        if self._shadow:
            if self._shadow[0][0] == entry:  # the file holds this very entry here already
                _, end = self._shadow.pop(0)
                self._entries.append(entry)
                self._ends.append(end)  # (a rewrite computes the ends anew)
                if not self._rewrite:
                    self._on_disk = end
                return
            self._shadow.clear()  # a differing entry (a conflict): the rest of the old tail goes
        start = self._ends[-1] if self._ends else len(MAGIC)
        rec = _record(entry[0], idx, term)
        self._entries.append(entry)
        self._ends.append(start + len(rec))
        if not self._rewrite:
            self._buf += rec
            self._buf_entries += 1

    def __getitem__(self, item):
        return self._entries[item]

    def __len__(self) -> int:
        return len(self._entries)

    def restore_tail(self) -> list[tuple[bytes, int, int]]:
        """After an AppendEntries was handled: give back the tail it truncated and did not
        replace (Raft keeps a follower's entries past the message's last one unless one of
        the message's entries conflicts; pysyncobj truncates on every overlapping message).
        Any term: they are this follower's own log, which it votes with. Safe because
        pysyncobj computed the commit index and its reply before this, from the shorter log
        (the message's last entry, Raft's rule), so nothing counts or applies them until a
        leader sends them again. Returns the entries given back (``_Node`` applies their
        membership changes again: pysyncobj rolled them back when it truncated)."""
        if not self._shadow:
            return []
        first = self._shadow[0][0]
        if self._entries and first[1] != self._entries[-1][1] + 1:
            return []  # not right after the log (cannot happen after a truncation): leave it on disk
        shadow, self._shadow = self._shadow, []
        for entry, end in shadow:
            self._entries.append(entry)
            self._ends.append(end)
        if not self._rewrite:
            self._on_disk = self._ends[-1]
        self.stats["restored_tail"] += len(shadow)
        return [entry for entry, _ in shadow]

    def deleteEntriesFrom(self, entryFrom: int) -> None:
        """Drop the entries from position ``entryFrom`` on, from the log pysyncobj sees. In the
        file they stay (the shadow) until an entry that differs is added in their place:
        pysyncobj truncates on every AppendEntries that overlaps the log, conflict or not,
        and a message with fewer entries than the follower holds must not drop, durably,
        entries it already acknowledged (Raft truncates only from a conflict)."""
        if entryFrom >= len(self._entries):
            return
        if self._buf and not self._rewrite:
            # the last ones are only buffered, and a reply held for the next flush may count
            # them: on disk first, then they go to the shadow like the rest
            try:
                self.flush()
            except JournalFailed:
                return  # the replica halts at its next tick, before it answers for anything
        removed = list(zip(self._entries[entryFrom:], self._ends[entryFrom:]))
        self._shadow = removed + self._shadow
        self.stats["kept_tail"] += len(removed)
        if not self._rewrite:
            self._on_disk = self._ends[entryFrom - 1] if entryFrom else len(MAGIC)
        del self._entries[entryFrom:]
        del self._ends[entryFrom:]

    def deleteEntriesTo(self, entryTo: int) -> None:
        """Drop the entries before position ``entryTo`` (log compaction, after a dump)."""
        if entryTo <= 0:
            return
        del self._entries[:entryTo]
        del self._ends[:entryTo]
        self._replace_file()

    def clear(self) -> None:
        """A snapshot was installed: the log starts again after it (the shadow goes too)."""
        self._entries.clear()
        self._ends.clear()
        self._shadow.clear()
        self._replace_file()

    def _replace_file(self) -> None:
        # the whole file is written anew at the next flush: the log, then the shadow
        self._rewrite = True
        self._buf.clear()
        self._buf_entries = 0

    def align_to_dump(self, prev: tuple, last: tuple) -> None:
        """At a dump load: if the log still holds the dump's last two entries further on
        (pysyncobj stopped between its dump and its compaction), drop what precedes them,
        so pysyncobj keeps the entries after the dump instead of clearing the log."""
        if len(self._entries) < 2:
            return
        i = prev[1] - self._entries[0][1]
        if i <= 0 or i + 1 >= len(self._entries):
            return
        if self._entries[i] == tuple(prev) and self._entries[i + 1] == tuple(last):
            log.info("%s: completing a compaction interrupted by a stop (entries before %d)", self.path, prev[1])
            self.deleteEntriesTo(i)
            self.flush()

    # ------------------------------------------------------------------ to disk
    @property
    def dirty(self) -> bool:
        """Entries (or removals) not written yet: what pysyncobj may not answer for."""
        return bool(self._buf) or self._rewrite or (self._file_len != self._on_disk and not self._shadow)

    def flush(self) -> None:
        """Write everything added (and removed) since the last flush; with ``sync``, fdatasync."""
        if self.failed is not None:
            raise JournalFailed(f"{self.path}: an earlier write failed: {self.failed!r}")
        if not self.dirty:
            return
        try:
            if self._rewrite:
                self._rewrite_file()
                return
            entries = self._buf_entries
            if self._file_len != self._on_disk and not self._shadow:  # a conflict cut the tail
                os.ftruncate(self._fd, self._on_disk)
                self._file_len = self._on_disk
            if self._buf:
                _pwrite_all(self._fd, self._buf, self._on_disk)
                self._on_disk += len(self._buf)
                self._file_len = self._on_disk
                self._buf.clear()
                self._buf_entries = 0
            if self.sync:
                self.fsync(self._fd)
                self.stats["syncs"] += 1
                self.stats["synced_entries"] += entries
        except OSError as e:
            self.failed = e
            raise JournalFailed(f"{self.path}: {e}") from e

    def _rewrite_file(self) -> None:
        if os.path.exists(self.dump_path):
            # the dump stands for the entries this rewrite drops: on disk first
            fsync_file(self.dump_path)
            fsync_dir(self._dir)
        body = bytearray(MAGIC)
        ends = []
        for command, idx, term in self._entries:
            body += _record(command, idx, term)
            ends.append(len(body))
        on_disk = len(body)
        shadow = []
        last = self._entries[-1][1] if self._entries else None
        for entry, _ in self._shadow:  # the tail pysyncobj dropped without a conflict stays
            if last is not None and entry[1] != last + 1:
                break  # (cannot happen: the shadow continues the log)
            body += _record(*entry)
            shadow.append((entry, len(body)))
            last = entry[1]
        write_atomic(self.path, bytes(body))
        os.close(self._fd)
        self._fd = os.open(self.path, os.O_RDWR)
        self._ends = ends
        self._on_disk = on_disk
        self._file_len = len(body)
        self._buf.clear()
        self._buf_entries = 0
        self._shadow = shadow
        self._rewrite = False
        self.stats["rewrites"] += 1

    # ------------------------------------------------------------------ term, vote, commit index
    def setCurrentTerm(self, term: int, votedForNodeId: str | None) -> None:
        # pysyncobj sends the vote (or the vote request) right after this returns
        self._term, self._voted_for = term, votedForNodeId
        self._save_state()

    def getCurrentTerm(self) -> int:
        return self._term

    def getVotedForNodeId(self) -> str | None:
        return self._voted_for

    def setRaftCommitIndex(self, raftCommitIndex: int) -> None:
        if raftCommitIndex != self._commit:
            self._commit = raftCommitIndex
            self._state_saved = False

    def getRaftCommitIndex(self) -> int:
        last = self._entries[-1][1] if self._entries else 1
        return max(1, min(self._commit, last))

    def onOneSecondTimer(self) -> None:
        if not self._state_saved:
            self._save_state()

    def _save_state(self) -> None:
        try:
            write_state(self.state_path, {"term": self._term, "voted_for": self._voted_for,
                                          "commit_index": self._commit})
        except OSError as e:
            self.failed = e
            raise JournalFailed(f"{self.state_path}: {e}") from e
        self._state_saved = True

    def _destroy(self) -> None:
        if self._fd < 0:
            return
        try:
            if self.failed is None:
                self.flush()
                if not self._state_saved:
                    self._save_state()
        finally:
            os.close(self._fd)
            self._fd = -1


def _read_all(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    chunks = []
    pos = 0
    while pos < size:
        b = os.pread(fd, size - pos, pos)
        if not b:
            break
        chunks.append(b)
        pos += len(b)
    return b"".join(chunks)


def _pwrite_all(fd: int, data: bytearray, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


# pysyncobj builds its journal from ``conf.journalFile`` (a path) in SyncObj.__init__,
# before its tick thread starts; this one patch point lets a ready Journal through.
_create_journal = _syncobj.createJournal


def _journal_from_conf(journal_file):
    return journal_file if isinstance(journal_file, Journal) else _create_journal(journal_file)


_syncobj.createJournal = _journal_from_conf
