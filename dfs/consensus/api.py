"""The contract between a replicated state machine and the Raft host.

A state machine (the metadata shard, the cluster map) implements
:class:`StateMachine`; the host (``dfs.consensus.raft.RaftHost``, pysyncobj
inside) or the in-process :class:`DirectLog` feeds it committed entries. The
state machine never sees pysyncobj.

Rules a state machine keeps:

* ``apply`` is deterministic: the same entries in the same order give the
  same state and the same results on every replica. Time, randomness and ids
  come inside the commands, chosen by the leader before submitting.
* ``apply(index, commands)`` stores ``index`` as its applied index in the same
  atomic write as the commands' effects; the host never calls it with an index
  at or below ``applied_index()`` (it skips those on journal replay), so each
  entry takes effect exactly once, also across restarts.
* One entry carries many commands (group commit); ``apply`` returns one
  result per command, in order.
"""

from __future__ import annotations

import abc
import asyncio


class StateMachine(abc.ABC):
    @abc.abstractmethod
    def applied_index(self) -> int:
        """The Raft index of the last applied entry (0 when empty)."""

    @abc.abstractmethod
    def apply(self, index: int, commands: list[bytes]) -> list[bytes]:
        """Apply one committed entry; return one result per command."""

    @abc.abstractmethod
    def snapshot(self, path: str) -> None:
        """Write the whole state into the (new) directory ``path``."""

    @abc.abstractmethod
    def restore(self, path: str) -> None:
        """Replace the whole state with the snapshot directory at ``path``."""


class Log(abc.ABC):
    """Where a server submits commands: a Raft group, or a direct in-process log."""

    @abc.abstractmethod
    async def submit(self, command: bytes, timeout: float | None = None) -> bytes:
        """Replicate ``command``, apply it, return its result.

        Raises ``dfs.common.errors.NotLeader`` (with a leader hint) when this
        node cannot accept writes and ``Unavailable`` when the deadline passes
        without a commit; in the latter case the command may or may not have
        been applied, which is why every mutating command carries a request id.
        """

    @property
    @abc.abstractmethod
    def is_leader(self) -> bool: ...

    @property
    @abc.abstractmethod
    def leader(self) -> str | None:
        """The Raft address ("host:port") of the current leader, if known."""

    @property
    def term(self) -> int:
        """The current Raft term (a log of one has one term)."""
        return 1

    def read_lease(self) -> bool:
        """Whether this node may answer reads from its applied state as the leader, i.e. no
        other node can have been made leader and have committed something since. A log of
        one: whenever it leads."""
        return self.is_leader


class DirectLog(Log):
    """A log of one: commands apply at once, in submission order (unit tests,
    the in-memory engine)."""

    def __init__(self, sm: StateMachine) -> None:
        self.sm = sm
        self._lock = asyncio.Lock()

    async def submit(self, command: bytes, timeout: float | None = None) -> bytes:
        async with self._lock:
            index = self.sm.applied_index() + 1
            return self.sm.apply(index, [command])[0]

    @property
    def is_leader(self) -> bool:
        return True

    @property
    def leader(self) -> str | None:
        return "local"
