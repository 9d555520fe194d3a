"""The linearizability checker (dfs/stress/linearizable.py) on hand-made histories
whose answers are known, and on random histories produced by a real
linearizable object (a lock-protected dict driven by threads), which must
always pass, and by one that breaks the rules on purpose, which must be caught."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from dfs.stress.linearizable import Call, Files, Namespace, Register, check, check_all, partition


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


# ---------------------------------------------------------------------- the Files model

def _fs_check(*calls):
    return check(Files(), [Call(*c) for c in calls])


def test_files_put_then_get_and_stat():
    r = _fs_check((0, 0, 1, ("open_w", 1, "d/a")), (0, 1, 2, ("write", 1, b"x1")),
                  (1, 3, 4, ("open_r", 2, "d/a")), (1, 4, 5, ("read", 2), b"x1"),
                  (1, 6, 7, ("open_r", 3, "d/a")), (1, 6, 7, ("size", 3), 2),
                  (1, 8, 9, ("ls", "d"), ("a",)))
    assert r.ok, r.explain()


def test_files_stale_get_after_a_completed_put_is_caught():
    r = _fs_check((0, 0, 1, ("open_w", 1, "d/a")), (0, 1, 2, ("write", 1, b"x1")),
                  (0, 3, 4, ("open_w", 2, "d/a")), (0, 4, 5, ("write", 2, b"x2")),
                  (1, 6, 7, ("open_r", 3, "d/a")), (1, 7, 8, ("read", 3), b"x1"))
    assert not r.ok
    assert r.stuck[0].input == ("read", 3)  # the operation the search could not place
    assert "not linearizable" in r.explain()


def test_files_a_reader_sees_the_size_of_its_open_and_the_inode_it_opened():
    # opened while the file was new and empty: nothing, although the put completed before the read
    assert _fs_check((0, 0, 1, ("open_w", 1, "d/a")), (1, 2, 3, ("open_r", 2, "d/a")),
                     (0, 1, 4, ("write", 1, b"x1")), (1, 5, 6, ("read", 2), b"")).ok
    # opened, then the name replaced by a rename: the read is of the inode opened
    assert _fs_check((0, 0, 1, ("open_w", 1, "d/a")), (0, 1, 2, ("write", 1, b"x1")),
                     (0, 2, 3, ("open_w", 2, "d/b")), (0, 3, 4, ("write", 2, b"x2")),
                     (1, 5, 6, ("open_r", 3, "d/a")), (0, 7, 8, ("rename", "d/b", "d/a")),
                     (1, 9, 10, ("read", 3), b"x1"), (1, 11, 12, ("open_r", 4, "d/a")),
                     (1, 12, 13, ("read", 4), b"x2")).ok


def test_files_a_name_replaced_by_a_rename_is_never_missing():
    h = [(0, 0, 1, ("create", 1, "d/a")), (0, 2, 3, ("create", 2, "d/b")),
         (0, 4, 10, ("rename", "d/b", "d/a")), (1, 5, 6, ("open_r", 3, "d/a"), "ENOENT")]
    assert not _fs_check(*h).ok
    h[-1] = (1, 5, 6, ("open_r", 3, "d/b"), "ENOENT")  # the source may be gone already
    assert _fs_check(*h).ok


def test_files_exclusive_create_and_unlink():
    assert _fs_check((0, 0, 1, ("create", 1, "d/a")), (1, 2, 3, ("create", 2, "d/a"), "EEXIST"),
                     (1, 4, 5, ("unlink", "d/a")), (0, 6, 7, ("unlink", "d/a"), "ENOENT"),
                     (0, 8, 9, ("ls", "d"), ())).ok
    # two exclusive creates of one name cannot both succeed
    assert not _fs_check((0, 0, 5, ("create", 1, "d/a")), (1, 0, 5, ("create", 2, "d/a"))).ok


def test_files_unknown_outcomes():
    # a put whose close failed: its content may show up, or never
    for seen in (b"", b"x1"):
        assert _fs_check((0, 0, 1, ("open_w", 1, "d/a")), (0, 1, None, ("write", 1, b"x1")),
                         (1, 5, 6, ("open_r", 2, "d/a")), (1, 6, 7, ("read", 2), seen)).ok
    # an unlink that may not have happened: the name may be there afterwards, or not
    for out in (None, "ENOENT"):
        assert _fs_check((0, 0, 1, ("create", 1, "d/a")), (0, 2, None, ("unlink", "d/a")),
                         (1, 5, 6, ("open_r", 2, "d/a"), out), *(
                             [(1, 6, 7, ("size", 2), 0)] if out is None else [])).ok


def _simulate_fs(seed: int, n: int, broken: bool) -> list[Call]:
    """Clients whose operations take effect at a random instant inside their interval on a
    reference file system (a dict), so the history is linearizable by construction; with
    ``broken``, a read now and then returns a value written earlier than the current one."""
    rnd = random.Random(seed)
    ops = []
    k = 0
    for client in range(3):
        t = rnd.random()
        for _ in range(n):
            start = t + rnd.random()
            end = start + rnd.random() * 3
            k += 1
            path = f"d/n{rnd.randrange(2)}"
            kind = rnd.choice(["put", "get", "unlink", "rename", "ls"])
            ops.append((rnd.uniform(start, end), client, start, end, kind, k, path, f"d/n{rnd.randrange(2)}"))
            t = end
    ops.sort()
    names: dict[str, bytes] = {}
    old: list[bytes] = []
    history = []
    for point, client, start, end, kind, k, path, other in ops:
        if kind == "put":
            value = f"v{k}".encode()
            old.append(names.get(path, b""))
            names[path] = value
            # open and write as one instant: the name existed or was created with it
            history += [Call(client, start, point, ("open_w", k, path)), Call(client, point, end, ("write", k, value))]
        elif kind == "get":
            if path not in names:
                history.append(Call(client, start, end, ("open_r", k, path), "ENOENT"))
                continue
            out = names[path]
            if broken and old and rnd.random() < 0.3 and old[0] != out:
                out = old[0]
            history += [Call(client, start, point, ("open_r", k, path)), Call(client, point, end, ("read", k), out)]
        elif kind == "unlink":
            history.append(Call(client, start, end, ("unlink", path), None if names.pop(path, None) is not None
                                else "ENOENT"))
        elif kind == "rename":
            if path not in names:
                history.append(Call(client, start, end, ("rename", path, other), "ENOENT"))
                continue
            names[other] = names.pop(path)
            history.append(Call(client, start, end, ("rename", path, other)))
        else:
            history.append(Call(client, start, end, ("ls", "d"), tuple(sorted(p[2:] for p in names))))
    return history


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10**6))
def test_files_linearizable_by_construction_passes(seed):
    r = check(Files(), _simulate_fs(seed, 10, broken=False), timeout=30)
    assert r.ok, r.explain()


def test_files_stale_reads_are_found():
    found = sum(not check(Files(), _simulate_fs(s, 10, broken=True), timeout=30).ok for s in range(40))
    assert found >= 8
