"""The linearizability checker (dfs/stress/linearizable.py) on hand-made histories
whose answers are known, and on random histories produced by a real
linearizable object (a lock-protected dict driven by threads), which must
always pass, and by one that breaks the rules on purpose, which must be caught."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from dfs.stress.linearizable import Call, Namespace, Register, check, check_all, partition


def test_sequential_register():
    h = [Call(0, 0, 1, ("w", 1)), Call(0, 2, 3, ("r",), 1), Call(0, 4, 5, ("w", 2)), Call(0, 6, 7, ("r",), 2)]
    assert check(Register(), h).ok


def test_stale_read_after_a_completed_write_is_caught():
    h = [Call(0, 0, 1, ("w", 1)), Call(1, 2, 3, ("r",), None)]
    r = check(Register(), h)
    assert not r.ok
    assert "not linearizable" in r.explain()


def test_concurrent_read_may_see_either():
    for seen in (None, 1):
        h = [Call(0, 0, 10, ("w", 1)), Call(1, 2, 3, ("r",), seen)]
        assert check(Register(), h).ok


def test_two_reads_must_agree_on_the_order():
    # w1 and w2 concurrent; reader A sees 1 then 2, reader B sees 2 then 1: impossible
    h = [Call(0, 0, 100, ("w", 1)), Call(1, 0, 100, ("w", 2)),
         Call(2, 10, 11, ("r",), 1), Call(2, 20, 21, ("r",), 2),
         Call(3, 10, 11, ("r",), 2), Call(3, 20, 21, ("r",), 1)]
    assert not check(Register(), h).ok


def test_unknown_outcome_may_or_may_not_take_effect():
    for seen in (None, 7):
        h = [Call(0, 0, None, ("w", 7)), Call(1, 5, 6, ("r",), seen)]
        assert check(Register(), h).ok
    # but once seen it cannot be unseen
    h = [Call(0, 0, None, ("w", 7)), Call(1, 5, 6, ("r",), 7), Call(1, 7, 8, ("r",), None)]
    assert not check(Register(), h).ok


def test_namespace_rename_is_atomic():
    ok = [Call(0, 0, 1, ("put", "a", "x")), Call(0, 2, 10, ("mv", "a", "b")),
          Call(1, 3, 4, ("get", "a"), "x"), Call(1, 5, 6, ("get", "b"), "x")]
    assert check(Namespace(), ok).ok
    # a reader that sees neither name in the middle of the rename saw half of it
    bad = [Call(0, 0, 1, ("put", "a", "x")), Call(0, 2, 10, ("mv", "a", "b")),
           Call(1, 3, 4, ("get", "a"), "ENOENT"), Call(1, 5, 6, ("get", "b"), "ENOENT")]
    assert not check(Namespace(), bad).ok


def test_partition_by_key():
    h = [Call(0, 0, 1, ("w", 1), None), Call(1, 2, 3, ("r",), 1)]
    hs = partition([Call(c.client, c.call, c.ret, ("k1",) + c.input, c.output) for c in h] +
                   [Call(2, 0, 1, ("k2", "r"), None)], key=lambda c: c.input[0])
    assert len(hs) == 2


def _simulate(seed: int, n: int, broken: bool) -> list[Call]:
    """Clients issue register operations that take effect at a random instant inside their
    interval (so the history is linearizable by construction), or, if ``broken``, a read
    sometimes returns a value older than the last write that took effect."""
    rnd = random.Random(seed)
    events = []
    for client in range(3):
        t = rnd.random()
        for _ in range(n):
            start = t + rnd.random()
            end = start + rnd.random() * 3
            point = rnd.uniform(start, end)
            op = ("w", rnd.randrange(4)) if rnd.random() < 0.5 else ("r",)
            events.append((point, client, start, end, op))
            t = end
    events.sort()
    value, history, old = None, [], []
    for point, client, start, end, op in events:
        if op[0] == "w":
            old.append(value)
            value = op[1]
            history.append(Call(client, start, end, op))
        else:
            out = value
            if broken and old and rnd.random() < 0.3:
                out = old[0]
            history.append(Call(client, start, end, op, out))
    return history


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10**6))
def test_linearizable_by_construction_passes(seed):
    assert check(Register(), _simulate(seed, 12, broken=False), timeout=30).ok


def test_stale_reads_are_found():
    found = sum(not check(Register(), _simulate(s, 12, broken=True), timeout=30).ok for s in range(40))
    assert found >= 10


def test_check_all_reports_the_first_failure():
    good = [Call(0, 0, 1, ("w", 1)), Call(0, 2, 3, ("r",), 1)]
    bad = [Call(0, 0, 1, ("w", 1)), Call(0, 2, 3, ("r",), 2)]
    assert check_all(Register(), [good, good]).ok
    assert not check_all(Register(), [good, bad]).ok
