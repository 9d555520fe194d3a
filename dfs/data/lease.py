"""A data server's membership lease: how long it may serve reads as a chain member
without word from mgmt.

A chain member cut off from mgmt and from its peers, but not from clients, does not
learn that mgmt took it out of its chains: its map still lists it, and so does the
map of a client that has not needed a new one. Writes acknowledged by the new chain
never reached it, and a read it answered would be stale (seen in the netns
linearizability test: a file's size published, its bytes read as zeros).

So a member answers reads only while its lease holds: ``length`` seconds from the
*sending* of the last heartbeat that the mgmt leader answered, a leader that answers
only while it holds its own Raft read lease (dfs/mgmt/server.py). mgmt takes a target
out of its chains only after ``target_timeout`` seconds without a heartbeat,
counted from their *arrival* (and from its own election for a new leader), and
``length`` is two thirds of that: the lease has run out, with a third of the
timeout as margin for the two clocks' rates, before any chain can change without
the member. mgmt answers a heartbeat without waiting for the Raft commits of the
statistics it carries, so its answer comes back well within the lease. Reads it refuses answer
EAGAIN, and the client moves on to another replica.

What the lease costs: with every mgmt replica unreachable, a data server stops
serving reads ``length`` seconds later (writes go on: they are checked by the chain
itself, and a member that misses one is taken out by its predecessor's failed
forward). Reads of a specific target for repair and verification (``F_ANY``) are
not chain reads and are not gated.

Imports: the standard library only.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable


class MembershipLease:
    def __init__(self, length: float, clock: Callable[[], float] = time.monotonic) -> None:
        if not length > 0:
            raise ValueError(f"lease length must be positive, not {length!r}")
        self.length = length
        self.clock = clock
        self._until = -math.inf

    def now(self) -> float:
        """The time to note before sending a heartbeat (this lease's clock)."""
        return self.clock()

    def renewed(self, sent_at: float) -> None:
        """mgmt's leader answered a heartbeat sent at ``sent_at``."""
        self._until = max(self._until, sent_at + self.length)

    def held(self) -> bool:
        return self.clock() < self._until

    def left(self) -> float:
        """Seconds of lease left (negative: run out that long ago; -inf: never held)."""
        return self._until - self.clock()
