"""Read handles: open handles for reading that live in the shard leader's memory.

An OPEN is a Raft command (every replica records the handle, so a file
unlinked while open survives a failover). For a file opened only to read, that
is a Raft round per open and another per close: the cost of every small-file
read in a training epoch. A read handle costs neither. The leader checks the
open against its applied state, answers at once and keeps the handle in this
table; nothing is logged. What the durable handle guaranteed still holds:

- A file whose last link goes while it is read is deleted as usual, with an
  orphan record that keeps its layout, size and attributes. The leader's
  orphan task frees no orphan that a live read handle holds, so the reader's
  chunks stay until it closes (or its lease ends); GETATTR of such an inode
  answers from the orphan record (fstat of an open, unlinked file). The data
  servers' orphan scan asks with GETATTRS ``scan``, which answers EBUSY for an
  orphan record: the leader's to free, not the scan's.
- A new leader knows nothing of its predecessor's read handles. Before a
  leader hands one out with expiry E it makes sure a READMARK command says
  "read handles of this term live until at least E" (one Raft round per
  ``MARK_AHEAD`` of handle time, not per open). A new leader frees no orphan
  until every earlier term's mark has passed; clients renew within a lease
  (RENEWREAD), which re-registers their handles in the new leader's table.
- An empty file leaves no orphan record (it has no chunks): the table keeps
  the attributes it had at the open, for that GETATTR.
- Inline files are opened with a logged OPEN instead (``durable``): their
  bytes go with the inode record, so there is nothing an orphan could keep
  for a reader.
"""

from __future__ import annotations

MARK_AHEAD_NS = 30_000_000_000  # a READMARK covers this much beyond the handle that asked for it
MARK_SKEW_NS = 5_000_000_000  # clock difference tolerated between one leader and the next
MAX_READ_HANDLES = 1_000_000  # beyond this many, opens fall back to logged OPENs


class ReadHandles:
    """ino -> {handle: expiry ns (the leader's wall clock)}, and the attributes at the
    open of the empty files among them."""

    def __init__(self) -> None:
        self.by_ino: dict[int, dict[bytes, int]] = {}
        self.attrs: dict[int, list] = {}
        self.count = 0

    def __len__(self) -> int:
        return self.count

    def put(self, ino: int, handle: bytes, expiry: int, attr: list | None = None) -> None:
        if attr is not None:
            self.attrs[ino] = attr
        hs = self.by_ino.setdefault(ino, {})
        old = hs.get(handle)
        if old is None:
            self.count += 1
        elif old >= expiry:
            return  # never shortened
        hs[handle] = expiry

    def live_handle(self, ino: int, handle: bytes, now: int) -> bool:
        return self.by_ino.get(ino, {}).get(handle, -1) >= now

    def drop(self, ino: int, handle: bytes) -> None:
        hs = self.by_ino.get(ino)
        if hs is not None and hs.pop(handle, None) is not None:
            self.count -= 1
            if not hs:
                del self.by_ino[ino]
                self.attrs.pop(ino, None)

    def live(self, ino: int, now: int) -> bool:
        """Whether some handle of ``ino`` has not expired by ``now``."""
        return any(e >= now for e in self.by_ino.get(ino, {}).values())

    def prune(self, now: int) -> int:
        """Forget expired handles; returns how many."""
        gone = 0
        for ino in list(self.by_ino):
            hs = self.by_ino[ino]
            for h in [h for h, e in hs.items() if e < now]:
                del hs[h]
                gone += 1
            if not hs:
                del self.by_ino[ino]
                self.attrs.pop(ino, None)
        self.count -= gone
        return gone

    def clear(self) -> None:
        self.by_ino.clear()
        self.attrs.clear()
        self.count = 0


def foreign_until(mark: tuple[int, int, int], term: int) -> int:
    """Until when (ns) read handles granted by leaders of other terms than ``term`` may
    live, from the READMARK record (last term, its until, earlier terms' until)."""
    last, mine, earlier = mark
    return earlier if last == term else max(mine, earlier)
