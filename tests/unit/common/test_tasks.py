"""The task supervisor (dfs/common/tasks.py): failures are logged, counted, and restarted
or fatal; injected faults; stop. Deterministic: tasks signal through events, and the
backoff is tiny."""

from __future__ import annotations

import asyncio
import logging

import pytest

from dfs.common.tasks import FAULT_ENV, InjectedFault, Supervisor


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


def test_a_failing_task_is_logged_counted_and_restarted(caplog):
    async def main():
        sup = Supervisor(backoff=(0.001, 0.01))
        runs = []
        third = asyncio.Event()

        async def flaky():
            runs.append(1)
            if len(runs) < 3:
                raise ValueError(f"boom {len(runs)}")
            third.set()
            await asyncio.Event().wait()

        sup.spawn("flaky", flaky)
        await third.wait()
        assert sup.failures["flaky"] == 2 and sup.running() == ["flaky"]
        await sup.stop()
        assert sup.running() == []

    with caplog.at_level(logging.WARNING, logger="dfs.tasks"):
        run(main())
    msgs = [r.getMessage() for r in caplog.records]
    assert any("task flaky failed (run 1): boom 1" in m for m in msgs)
    assert any("task flaky restarting" in m for m in msgs)
    assert any(r.exc_info for r in caplog.records)  # with the traceback


def test_a_fatal_task_calls_on_fatal():
    async def main():
        dead = asyncio.Event()
        seen = []

        def fatal(name, exc):
            seen.append((name, type(exc)))
            dead.set()

        sup = Supervisor(on_fatal=fatal)

        async def accept():
            raise OSError("accept failed")

        sup.spawn("accept", accept, policy="fatal")
        await dead.wait()
        assert seen == [("accept", OSError)]
        await sup.stop()

    run(main())


def test_a_forever_task_that_returns_is_a_failure():
    async def main():
        sup = Supervisor(backoff=(0.001, 0.01))
        n = []
        again = asyncio.Event()

        async def loop():
            n.append(1)
            if len(n) == 2:
                again.set()
                await asyncio.Event().wait()

        sup.spawn("loop", loop)
        await again.wait()
        assert sup.failures["loop"] == 1
        done = []

        async def once():
            done.append(1)

        await sup.spawn("once", once, forever=False)
        assert done == [1] and sup.failures["once"] == 0
        await sup.stop()

    run(main())


def test_injected_faults(monkeypatch, caplog):
    monkeypatch.setenv(FAULT_ENV, "hb, other")

    async def main():
        sup = Supervisor(backoff=(0.001, 0.01))
        started = asyncio.Event()

        async def hb():
            started.set()
            await asyncio.Event().wait()

        sup.spawn("hb", hb)
        await started.wait()
        assert sup.failures["hb"] == 1 and "InjectedFault" in sup.tasks["hb"].last_error
        await sup.stop()
        # spawned again under its name (a renewer that ended and is needed again): no second fault
        started.clear()
        sup.spawn("hb", hb)
        await started.wait()
        assert sup.failures["hb"] == 1
        await sup.stop()

    with caplog.at_level(logging.ERROR, logger="dfs.tasks"):
        run(main())
    assert any("injected fault in task hb" in r.getMessage() for r in caplog.records)
    assert issubclass(InjectedFault, RuntimeError)


def test_bad_policy_and_duplicate_names():
    async def main():
        sup = Supervisor()
        with pytest.raises(ValueError):
            sup.spawn("x", asyncio.sleep, policy="ignore")

        async def wait():
            await asyncio.Event().wait()

        sup.spawn("x", wait)
        with pytest.raises(ValueError):
            sup.spawn("x", wait)
        await sup.stop()

    run(main())
