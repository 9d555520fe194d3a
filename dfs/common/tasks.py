"""Background tasks that never stop silently: one supervisor per process.

Every long-running task of a server or a client (accept loops, heartbeats,
failure detection, the cluster-map follower, scrubbing, orphan collection,
read-handle pruning, lease renewal, ...) runs under a ``Supervisor``. When a
task raises an exception it did not expect, the supervisor logs it with the
task's name and a traceback, counts it (``failures`` by task, exported as
``dfs_task_failures_total{task}`` where the process has metrics), and then,
by the task's policy:

* ``restart`` (the default): runs the task again after a backoff that grows
  from ``backoff[0]`` to ``backoff[1]`` seconds and resets once a run has
  lasted longer than the cap;
* ``fatal``: the process cannot do its job without it: the supervisor calls
  ``on_fatal`` (by default it logs CRITICAL and ends the process with exit
  status 70, EX_SOFTWARE, so that systemd or Kubernetes restarts it and the
  operator sees why).

A task that returns is finished, unless it was declared ``forever``: then
its return is unexpected too and handled like an exception.

Fault injection for tests: ``DFS_FAULT_TASKS`` (comma-separated task names,
or ``*``) makes the first run of each named task raise ``InjectedFault``
before it starts (once per name: a task spawned again under the same name runs clean), so a test of a real process can check that the failure is
logged and handled.

Imports: the standard library only.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

log = logging.getLogger("dfs.tasks")

FAULT_ENV = "DFS_FAULT_TASKS"
EX_SOFTWARE = 70


class InjectedFault(RuntimeError):
    """Raised by a task's first run when ``DFS_FAULT_TASKS`` names it."""


def _die(name: str, exc: BaseException | None) -> None:
    log.critical("task %s failed and the process cannot go on without it: exiting", name)
    logging.shutdown()
    os._exit(EX_SOFTWARE)


@dataclass
class _Task:
    name: str
    fn: Callable[[], Awaitable[object]]
    policy: str
    forever: bool
    runs: int = 0
    task: asyncio.Task | None = None
    last_error: str | None = None


@dataclass
class Supervisor:
    """``spawn`` tasks on the running loop; ``stop`` cancels and awaits them all."""

    backoff: tuple[float, float] = (0.1, 5.0)
    on_fatal: Callable[[str, BaseException | None], None] = _die
    failures: Counter = field(default_factory=Counter)
    tasks: dict[str, _Task] = field(default_factory=dict)
    _faults: set[str] = field(default_factory=set)
    _injected: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._faults = {x.strip() for x in os.environ.get(FAULT_ENV, "").split(",") if x.strip()}

    def spawn(self, name: str, fn: Callable[[], Awaitable[object]], *, policy: str = "restart",
              forever: bool = True) -> asyncio.Task:
        """Run ``fn()`` (a coroutine function) as task ``name`` (unique in this supervisor)."""
        if policy not in ("restart", "fatal"):
            raise ValueError(f"unknown policy {policy!r}")
        if name in self.tasks and self.tasks[name].task is not None and not self.tasks[name].task.done():
            raise ValueError(f"task {name!r} is already running")
        t = _Task(name, fn, policy, forever)
        self.tasks[name] = t
        t.task = asyncio.get_running_loop().create_task(self._run(t), name=f"dfs:{name}")
        return t.task

    def _inject(self, t: _Task) -> None:
        # once per name in this supervisor: a task spawned again under its name (a renewer that
        # ends when nothing is left to renew) runs clean, so a test can count one failure each
        if t.name not in self._injected and (t.name in self._faults or "*" in self._faults):
            self._injected.add(t.name)
            raise InjectedFault(f"injected fault in task {t.name} ({FAULT_ENV})")

    async def _run(self, t: _Task) -> None:
        delay = self.backoff[0]
        while True:
            t.runs += 1
            started = time.monotonic()
            exc: BaseException | None = None
            try:
                self._inject(t)
                await t.fn()
                if not t.forever:
                    return
                log.error("task %s returned but should run for ever", t.name)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - the point: nothing stops silently
                exc = e
                log.exception("task %s failed (run %d): %s", t.name, t.runs, e)
            self.failures[t.name] += 1
            t.last_error = repr(exc) if exc is not None else "returned"
            if t.policy == "fatal":
                self.on_fatal(t.name, exc)
                return
            if time.monotonic() - started > self.backoff[1]:
                delay = self.backoff[0]  # it ran a good while: start the backoff again
            log.warning("task %s restarting in %.2fs", t.name, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.backoff[1])

    def running(self) -> list[str]:
        return [n for n, t in self.tasks.items() if t.task is not None and not t.task.done()]

    async def stop(self) -> None:
        ts = [t.task for t in self.tasks.values() if t.task is not None and not t.task.done()]
        for t in ts:
            t.cancel()
        for t in ts:
            try:
                await t
            except BaseException:  # noqa: BLE001, S110 - stopping: outcomes of cancelled tasks do not matter
                pass
