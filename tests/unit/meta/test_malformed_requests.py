"""A malformed mutation changes nothing (found by tests/fuzz/test_meta_fuzz.py).

Before the fix a logged op's arguments were decoded only when the Raft entry
was applied: a CREATE whose name was a map went through the log and left an
idempotency record (and its expiry entry) for its request id, so every
malformed request cost a Raft entry and a stored record.
"""

from __future__ import annotations

import asyncio
import errno

import pytest

from dfs.common import errors as err
from dfs.common.ids import ROOT_INO
from dfs.common.ops import Op
from dfs.common.records import Caller
from dfs.meta.local import LocalEngine

ROOT = Caller(0, 0, ())
BAD = [[ROOT_INO, {"not": "a name"}, 0o100644, 0, True, 0], [ROOT_INO], ["x", b"n", 0o100644],
       [ROOT_INO, b"n", 0o100644, 0, True, 0, None, None, "extra", "fields", 1, 2, 3]]


@pytest.mark.parametrize("args", BAD)
def test_a_malformed_create_is_einval_and_logs_nothing(args):
    async def main():
        svc = LocalEngine(1).services[0]
        before = list(svc.store.kv.items())
        with pytest.raises(err.InvalidArgument):
            await svc.execute(Op.CREATE, b"rid-1", ROOT, args)
        (res,) = await svc.execute_batch([(Op.CREATE, b"rid-2", ROOT, args)])
        assert isinstance(res, err.InvalidArgument)
        assert list(svc.store.kv.items()) == before  # not even the applied index moved

    asyncio.run(main())


def test_a_failing_read_fails_alone_in_a_batch(caplog, monkeypatch):
    """A read op that raises something not a DfsError (a bug: found by the fuzzer with DIRPARENT
    of inode -1, whose lock key could not be packed; that one is EINVAL now, below) is that
    op's EIO; the batch's other ops are answered (before, the exception ended the whole
    ExecuteBatch call)."""
    async def main():
        svc = LocalEngine(1).services[0]
        real = svc.store.read_request

        def buggy(h, caller, req):
            if h.op == Op.DIRPARENT:
                raise RuntimeError("a bug in a read op")
            return real(h, caller, req)

        monkeypatch.setattr(svc.store, "read_request", buggy)
        res = await svc.execute_batch([(Op.DIRPARENT, b"", ROOT, [ROOT_INO]), (Op.GETATTR, b"", ROOT, [ROOT_INO])])
        assert isinstance(res[0], err.DfsError) and res[0].errno == errno.EIO
        assert not isinstance(res[1], Exception) and res[1][0] == ROOT_INO  # the root's attributes

    asyncio.run(main())


@pytest.mark.parametrize("ino", [-1, 1 << 64])
def test_an_inode_id_outside_64_bits_is_einval(ino):
    """DIRPARENT of inode -1 packed it into a lock key and answered EIO with a traceback
    (found by scripts/fuzz.py --random)."""
    async def main():
        svc = LocalEngine(1).services[0]
        with pytest.raises(err.InvalidArgument):
            await svc.execute(Op.DIRPARENT, b"", ROOT, [ino])

    asyncio.run(main())
