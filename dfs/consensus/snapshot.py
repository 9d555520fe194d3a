"""Raft snapshots that are the state machine's own (RocksDB checkpoints), packed
for pysyncobj's log compaction.

pysyncobj compacts its log by handing a serializer its ``(lastEntry,
prevEntry, clusterNodes)`` tuple; ``SnapshotCodec.serialize`` writes one
uncompressed tar holding ``meta.pickle`` (that tuple plus the state machine's
applied index) and the ``state/`` directory from ``sm.snapshot``.
``deserialize`` (at startup, or a snapshot received from the leader) restores
the state machine from it only when the snapshot is ahead of the state
machine (a wiped or lagging replica receiving the leader's snapshot, or a
state machine that lost its unsynced writes in a power cut); at a restart
after a clean stop the local state is already at or past the local dump and
is kept. A dump is fsynced before pysyncobj renames it into place, and again
(with its directory) before the state machine moves to it; ``check`` refuses
a damaged one at start (pysyncobj would log it and go on without it). At the
first load, the membership of ``members.json`` replaces the dump's.

Both run on pysyncobj's tick thread, as ``sm.apply`` does, so the applied
index and the checkpoint taken together are consistent.

May import: dfs.consensus.api, dfs.consensus.files; pysyncobj's node type only
(for the membership that replaces a dump's at startup, see ``startup_members``).
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import shutil
import tarfile
import tempfile
import time
from collections.abc import Callable

from dfs.consensus.api import StateMachine
from dfs.consensus.files import CorruptState, fsync_dir, fsync_file

log = logging.getLogger(__name__)

SNAP_TMP_DIR = "snap-tmp"
_META_MEMBER = "meta.pickle"
_STATE_MEMBER = "state"
_SNAPSHOT_FORMAT = 1


class SnapshotCodec:
    """pysyncobj's ``serializer``/``deserializer`` for ``sm``, with scratch space under
    ``data_dir`` (emptied now: leftovers of a crash).

    ``startup_members()`` is asked once, when the first dump is loaded: a membership
    (Raft addresses) that replaces the dump's, which is that of its compaction and may
    be older (None: keep the dump's). ``taken`` / ``restored`` are called after each
    snapshot written / installed (statistics)."""

    def __init__(self, sm: StateMachine, data_dir: str, *,
                 startup_members: Callable[[], list[str] | None] = lambda: None,
                 taken: Callable[[], None] = lambda: None, restored: Callable[[], None] = lambda: None) -> None:
        self.sm = sm
        self.scratch = os.path.join(data_dir, SNAP_TMP_DIR)
        shutil.rmtree(self.scratch, ignore_errors=True)
        os.makedirs(self.scratch)
        self._startup_members = startup_members
        self._taken = taken
        self._restored = restored

    def serialize(self, tmp_filename: str, data: tuple) -> None:
        """pysyncobj's log compaction: ``data`` is (lastEntry, prevEntry, nodes)."""
        work = tempfile.mkdtemp(dir=self.scratch)
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
            self._taken()
        except BaseException:
            log.exception("snapshot failed")
            raise
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def check(self, filename: str) -> None:
        """Raise ``CorruptState`` unless ``filename`` is a whole dump of this format (at
        start: pysyncobj would log a damaged dump and go on without it, from less state
        than the replica acknowledged)."""
        size = os.path.getsize(filename)
        try:
            with tarfile.open(filename, mode="r") as tar:
                members = tar.getmembers()
                meta = pickle.loads(tar.extractfile(_META_MEMBER).read())
            if meta.get("format") != _SNAPSHOT_FORMAT:
                raise ValueError(f"unknown snapshot format {meta.get('format')!r}")
            if len(meta["data"]) != 3 or not isinstance(meta["sm_applied"], int):
                raise ValueError("no Raft entries or applied index in its metadata")
            end = max(m.offset_data + m.size for m in members)
            if end > size:
                raise ValueError(f"{size} bytes, its last member ends at {end}")
        except (tarfile.TarError, OSError, EOFError, KeyError, TypeError, ValueError, AttributeError,
                pickle.UnpicklingError) as e:
            raise CorruptState(f"{filename} is damaged: {e}") from None

    def deserialize(self, filename: str) -> tuple:
        """Load a dump (at startup, or one received from the leader): ``(last entry,
        previous entry, nodes)``, as ``serialize`` was given it."""
        with tarfile.open(filename, mode="r") as tar:
            meta = pickle.loads(tar.extractfile(_META_MEMBER).read())
            if meta.get("format") != _SNAPSHOT_FORMAT:
                raise ValueError(f"unknown snapshot format {meta.get('format')!r}")
            data = tuple(meta["data"])
            members = self._startup_members()
            if members is not None:
                from pysyncobj.node import TCPNode

                data = (*data[:2], {TCPNode(a) for a in members})
            if meta["sm_applied"] > self.sm.applied_index():
                # pysyncobj renamed a received snapshot into place unsynced: the state machine
                # may only move to it once it is on disk (a restart would restore it again)
                fsync_file(filename)
                fsync_dir(os.path.dirname(os.path.abspath(filename)))
                work = tempfile.mkdtemp(dir=self.scratch)
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
                self._restored()
        return data
