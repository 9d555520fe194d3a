"""DiskJournal: pysyncobj's journal interface on a file that is synced before anything
is acknowledged; the term/vote state file; what a damaged or torn file does at start."""

from __future__ import annotations

import json
import logging
import os

import pytest
from pysyncobj.journal import FileJournal

from dfs.consensus.files import CorruptState, read_state, write_state
from dfs.consensus.journal import MAGIC, DiskJournal, JournalFailed


class Syncs:
    """Counts the journal's fdatasyncs (and still does them)."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self, fd: int) -> None:
        self.n += 1
        os.fdatasync(fd)


def open_journal(d, sync: bool = True) -> tuple[DiskJournal, Syncs]:
    j = DiskJournal(str(d / "raft.log"), str(d / "raft.state"), str(d / "raft.dump"), sync=sync)
    s = Syncs()
    j.fsync = s
    return j, s


def entries(j: DiskJournal) -> list[tuple[bytes, int, int]]:
    return [j[i] for i in range(len(j))]


def E(i: int, term: int = 1, tag: bytes = b"") -> tuple[bytes, int, int]:
    return (b"cmd%d%s" % (i, tag), i, term)


def test_entries_survive_a_reopen_and_one_sync_covers_a_batch(tmp_path):
    j, s = open_journal(tmp_path)
    for i in range(1, 6):
        j.add(*E(i))
    assert j.dirty and s.n == 0  # add only buffers
    j.flush()
    assert s.n == 1 and not j.dirty and j.stats["synced_entries"] == 5
    j.flush()
    assert s.n == 1  # nothing new: no sync
    j.add(*E(6))
    j.flush()
    assert s.n == 2
    j._destroy()
    j2, _ = open_journal(tmp_path)
    assert entries(j2) == [E(i) for i in range(1, 7)]
    assert j2[-1] == E(6) and j2[2:4] == [E(3), E(4)]  # pysyncobj indexes and slices it
    j2._destroy()


def test_async_writes_without_syncing(tmp_path):
    j, s = open_journal(tmp_path, sync=False)
    j.add(*E(1))
    j.flush()
    assert s.n == 0 and j.stats["syncs"] == 0
    assert os.path.getsize(tmp_path / "raft.log") > len(MAGIC)  # in the OS: survives a crash of the process
    j2, _ = open_journal(tmp_path, sync=False)
    assert entries(j2) == [E(1)]


def test_a_torn_tail_is_cut_with_a_warning(tmp_path, caplog):
    j, _ = open_journal(tmp_path)
    for i in range(1, 4):
        j.add(*E(i))
    j.flush()
    j._destroy()
    size = os.path.getsize(tmp_path / "raft.log")
    with open(tmp_path / "raft.log", "ab") as f:
        f.write(b"\x40\x00\x00\x00garbage of a record nobody synced")
    with caplog.at_level(logging.WARNING, "dfs.consensus.journal"):
        j2, _ = open_journal(tmp_path)
    assert entries(j2) == [E(1), E(2), E(3)]
    assert os.path.getsize(tmp_path / "raft.log") == size
    assert "cut" in caplog.text
    j2.add(*E(4))  # and the log goes on after the cut
    j2._destroy()
    j3, _ = open_journal(tmp_path)
    assert entries(j3) == [E(1), E(2), E(3), E(4)]


def test_a_record_failing_its_crc_ends_the_log(tmp_path):
    j, _ = open_journal(tmp_path)
    for i in range(1, 4):
        j.add(*E(i))
    j._destroy()
    data = bytearray((tmp_path / "raft.log").read_bytes())
    data[-2] ^= 0xFF  # inside the last command
    (tmp_path / "raft.log").write_bytes(bytes(data))
    j2, _ = open_journal(tmp_path)
    assert entries(j2) == [E(1), E(2)]


@pytest.mark.parametrize("damage", ["header", "gap"])
def test_a_damaged_log_is_an_error_at_start(tmp_path, damage):
    j, _ = open_journal(tmp_path)
    for i in (1, 2):
        j.add(*E(i))
    if damage == "gap":
        j.add(*E(4))
    j._destroy()
    if damage == "header":
        data = bytearray((tmp_path / "raft.log").read_bytes())
        data[0:4] = b"junk"
        (tmp_path / "raft.log").write_bytes(bytes(data))
    with pytest.raises(CorruptState):
        open_journal(tmp_path)


def test_truncating_to_the_same_entries_rewrites_nothing(tmp_path):
    j, s = open_journal(tmp_path)
    for i in range(1, 6):
        j.add(*E(i))
    j.flush()
    before = (tmp_path / "raft.log").read_bytes()
    # a follower given entries 3..5 again (an AppendEntries with prevLogIdx 2)
    j.deleteEntriesFrom(2)
    for i in range(3, 6):
        j.add(*E(i))
    assert not j.dirty
    j.flush()
    assert s.n == 1 and (tmp_path / "raft.log").read_bytes() == before
    # the same prefix and then a shorter tail (a retransmission after a reordered reset):
    # pysyncobj no longer sees 4 and 5, but the file keeps them (acknowledged already)
    j.deleteEntriesFrom(2)
    j.add(*E(3))
    assert not j.dirty
    j.flush()
    assert entries(j) == [E(1), E(2), E(3)]
    assert s.n == 1 and (tmp_path / "raft.log").read_bytes() == before
    j._destroy()
    j2, _ = open_journal(tmp_path)
    assert entries(j2) == [E(i) for i in range(1, 6)]


def test_a_shorter_retransmission_never_drops_what_a_held_reply_counts(tmp_path):
    """A follower's reply waits for the next flush; if a later message of the same poll drops
    the entries it counts while they are only buffered, they are written first, then kept."""
    j, s = open_journal(tmp_path)
    for i in range(1, 4):
        j.add(*E(i))
    j.flush()
    j.add(*E(4))  # message A: 4 and 5, its reply held until the flush
    j.add(*E(5))
    j.deleteEntriesFrom(3)  # message B (prevLogIdx 3): only 4
    assert s.n == 2  # A's entries went to disk before they left pysyncobj's log
    j.add(*E(4))
    j.flush()
    assert entries(j) == [E(1), E(2), E(3), E(4)]
    j._destroy()
    j2, _ = open_journal(tmp_path)
    assert entries(j2) == [E(i) for i in range(1, 6)]


def test_the_tail_a_message_cut_without_a_conflict_comes_back(tmp_path):
    """pysyncobj truncates a follower's log on every AppendEntries that overlaps it. After the
    message, ``restore_tail`` gives back what no entry of it conflicted with, of any term
    (Raft cuts only from a conflict; ``dfs.consensus.raft`` calls it, see
    test_raft_host.py::test_a_follower_keeps_the_tail_no_entry_of_a_message_conflicts_with)."""
    j, _ = open_journal(tmp_path)
    j.setCurrentTerm(2, None)
    for i in range(1, 4):
        j.add(*E(i, 1))
    for i in range(4, 8):
        j.add(*E(i, 2))
    j.flush()
    # a message with prevLogIdx 4 and only entry 5 (a shorter retransmission): while it is
    # handled, pysyncobj sees the log end at 5; afterwards, the tail is back
    j.deleteEntriesFrom(4)
    j.add(*E(5, 2))
    assert not j.dirty and len(j) == 5
    assert j.restore_tail() == [E(6, 2), E(7, 2)]
    assert entries(j) == [E(i, 1) for i in range(1, 4)] + [E(i, 2) for i in range(4, 8)]
    assert j.stats["restored_tail"] == 2 and not j.dirty and j.restore_tail() == []
    # a later term's heartbeat with prevLogIdx 5: the older term's tail comes back as well
    j.setCurrentTerm(3, None)
    j.deleteEntriesFrom(5)
    assert len(j) == 5 and j.restore_tail() == [E(6, 2), E(7, 2)] and len(j) == 7
    j.deleteEntriesFrom(5)
    j.add(*E(6, 2))  # the same entry again: taken back, no write
    assert not j.dirty and len(j) == 6
    # a conflict ends it: the new entry replaces the rest, nothing comes back
    j.add(*E(7, 3, b"new"))
    assert j.restore_tail() == []
    j.flush()
    j._destroy()
    j2, _ = open_journal(tmp_path)
    assert entries(j2)[-2:] == [E(6, 2), E(7, 3, b"new")] and len(j2) == 7
    # restored, then reopened: the file held it all along
    j2.deleteEntriesFrom(3)
    assert j2.restore_tail() == entries(j2)[3:] and len(j2) == 7
    j2.flush()
    j2._destroy()
    j3, _ = open_journal(tmp_path)
    assert len(j3) == 7
    j3._destroy()


def test_a_compaction_keeps_the_tail_pysyncobj_dropped(tmp_path):
    j, _ = open_journal(tmp_path)
    for i in range(1, 8):
        j.add(*E(i))
    j.flush()
    j.deleteEntriesFrom(4)  # 5..7 leave pysyncobj's log without a conflict
    (tmp_path / "raft.dump").write_bytes(b"the dump stands for entries 1..2")
    j.deleteEntriesTo(2)  # the compaction rewrites the file: 3, 4, and still 5..7
    j.flush()
    assert entries(j) == [E(3), E(4)]
    j.add(*E(5))  # the same again: nothing to write
    assert not j.dirty
    j._destroy()
    j2, _ = open_journal(tmp_path)
    assert entries(j2) == [E(i) for i in range(3, 8)]
    # a shadow met by a conflict during a pending rewrite: the rewrite has the new entry only
    j2.deleteEntriesFrom(2)  # 5..7 to the shadow
    j2.deleteEntriesTo(1)
    j2.add(*E(5))
    j2.add(*E(6, 2, b"new"))
    j2._destroy()
    j3, _ = open_journal(tmp_path)
    assert entries(j3) == [E(4), E(5), E(6, 2, b"new")]


def test_a_conflicting_entry_replaces_the_tail(tmp_path):
    j, _ = open_journal(tmp_path)
    for i in range(1, 6):
        j.add(*E(i))
    j.flush()
    j.deleteEntriesFrom(2)
    j.add(*E(3))  # the same
    j.add(*E(4, term=2, tag=b"new"))  # differs: 4 and 5 go
    j.flush()
    assert entries(j) == [E(1), E(2), E(3), E(4, 2, b"new")]
    j.deleteEntriesFrom(4)  # nothing there
    j.add(*E(5, 2))
    j.deleteEntriesFrom(4)  # an entry still in the buffer
    j.add(*E(5, 2, b"x"))
    j._destroy()
    j2, _ = open_journal(tmp_path)
    assert entries(j2) == [E(1), E(2), E(3), E(4, 2, b"new"), E(5, 2, b"x")]


def test_compaction_and_clear_replace_the_file(tmp_path):
    j, _ = open_journal(tmp_path)
    for i in range(1, 8):
        j.add(*E(i))
    j.flush()
    (tmp_path / "raft.dump").write_bytes(b"the dump stands for entries 1..4")
    j.deleteEntriesTo(3)  # keeps 4.. (pysyncobj keeps the dump's previous entry first)
    j.add(*E(8))
    assert entries(j) == [E(i) for i in range(4, 9)]
    j.flush()
    assert j.stats["rewrites"] == 1
    j.deleteEntriesFrom(3)  # and then a follower's truncation in the new file
    j.add(*E(7, 2))
    j._destroy()
    j2, _ = open_journal(tmp_path)
    assert entries(j2) == [E(4), E(5), E(6), E(7, 2)]
    j2.deleteEntriesFrom(2)  # a tail in the shadow: a snapshot install drops it with the rest
    j2.clear()  # a snapshot installed: the dump's two entries follow
    j2.add(*E(20, 3))
    j2.add(*E(21, 3))
    j2._destroy()
    j3, _ = open_journal(tmp_path)
    assert entries(j3) == [E(20, 3), E(21, 3)]
    assert not (tmp_path / "raft.log.tmp").exists()


def test_align_to_dump_completes_an_interrupted_compaction(tmp_path):
    j, _ = open_journal(tmp_path)
    for i in range(1, 10):
        j.add(*E(i))
    j.align_to_dump(E(6), E(7))  # pysyncobj dumped at 7, stopped before compacting
    assert entries(j) == [E(6), E(7), E(8), E(9)]
    j.align_to_dump(E(6), E(7))  # aligned already
    assert len(j) == 4
    j.align_to_dump(E(30), E(31))  # a snapshot ahead of the whole log: pysyncobj clears it
    j.align_to_dump(E(7, 5), E(8, 5))  # other entries at those indexes: not this log's dump
    assert entries(j) == [E(6), E(7), E(8), E(9)]
    j._destroy()
    j2, _ = open_journal(tmp_path)
    assert entries(j2) == [E(6), E(7), E(8), E(9)]


def test_term_and_vote_are_written_at_once_and_durably(tmp_path):
    j, _ = open_journal(tmp_path)
    j.setCurrentTerm(7, "127.0.0.1:1234")
    st = read_state(str(tmp_path / "raft.state"))  # before anything else happens
    assert st["term"] == 7 and st["voted_for"] == "127.0.0.1:1234"
    j.add(*E(1))
    j.add(*E(2))
    j.setRaftCommitIndex(2)
    assert read_state(str(tmp_path / "raft.state"))["commit_index"] == 1  # a hint: once a second
    j.onOneSecondTimer()
    assert read_state(str(tmp_path / "raft.state"))["commit_index"] == 2
    j._destroy()
    j2, _ = open_journal(tmp_path)
    assert (j2.getCurrentTerm(), j2.getVotedForNodeId(), j2.getRaftCommitIndex()) == (7, "127.0.0.1:1234", 2)


def test_the_commit_index_never_points_past_the_log(tmp_path):
    write_state(str(tmp_path / "raft.state"), {"term": 3, "voted_for": None, "commit_index": 50})
    j, _ = open_journal(tmp_path)
    for i in range(1, 6):
        j.add(*E(i))
    assert j.getRaftCommitIndex() == 5


@pytest.mark.parametrize("damage", ["truncated", "flipped", "empty", "not json"])
def test_a_damaged_state_file_is_an_error_never_empty(tmp_path, damage):
    write_state(str(tmp_path / "raft.state"), {"term": 12, "voted_for": "127.0.0.1:9", "commit_index": 4})
    raw = (tmp_path / "raft.state").read_bytes()
    if damage == "truncated":
        raw = raw[: len(raw) // 2]
    elif damage == "flipped":
        raw = raw.replace(b'"term": 12', b'"term": 13')
    elif damage == "empty":
        raw = b""
    else:
        raw = b"\x80\x04 a pickle of pysyncobj"
    (tmp_path / "raft.state").write_bytes(raw)
    with pytest.raises(CorruptState):
        open_journal(tmp_path)


def test_a_failed_sync_stops_the_journal(tmp_path):
    j, _ = open_journal(tmp_path)
    j.add(*E(1))

    def eio(fd):
        raise OSError(5, "Input/output error")

    j.fsync = eio
    with pytest.raises(JournalFailed):
        j.flush()
    assert j.failed is not None
    j.fsync = os.fdatasync
    with pytest.raises(JournalFailed):  # never retried: the data may be gone from the page cache
        j.flush()
    j._destroy()


def test_pysyncobj_journal_is_imported_once(tmp_path):
    old = FileJournal(str(tmp_path / "raft.journal"))
    for i in range(1, 4):
        old.add(*E(i))
    old.setCurrentTerm(5, "127.0.0.1:7000")
    old.setRaftCommitIndex(3)
    old.onOneSecondTimer()
    old._destroy()
    j, _ = open_journal(tmp_path)
    assert entries(j) == [E(1), E(2), E(3)]
    assert (j.getCurrentTerm(), j.getVotedForNodeId(), j.getRaftCommitIndex()) == (5, "127.0.0.1:7000", 3)
    assert not (tmp_path / "raft.journal").exists() and not (tmp_path / "raft.journal.meta").exists()
    j._destroy()
    assert json.loads((tmp_path / "raft.state").read_text())["term"] == 5


def test_a_failed_term_write_stops_the_journal(tmp_path, monkeypatch):
    import dfs.consensus.journal as journal_mod

    j, _ = open_journal(tmp_path)

    def enospc(path, doc):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(journal_mod, "write_state", enospc)
    with pytest.raises(JournalFailed):  # pysyncobj would send the vote right after: it must not
        j.setCurrentTerm(3, "127.0.0.1:1")
    assert j.failed is not None
    with pytest.raises(JournalFailed):
        j.flush()
    j._destroy()
