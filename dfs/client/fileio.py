"""The library's file objects over the core's opens (``FileRef``, dfs/client/core.py).

* ``Cursor``: one open file's position and mode, shared by both kinds of object;
* ``AsyncFile``: binary, for asyncio code (``AsyncClient.open``);
* ``RawFile(io.RawIOBase)``: for the sync ``Client``, each call run on the
  client's loop thread; wrapped like ``builtins.open`` wraps a descriptor in
  ``BufferedReader``/``BufferedWriter``/``BufferedRandom`` (1 MiB buffers: one
  call per RPC-sized piece, not per 8 KiB) and ``TextIOWrapper``: thin
  subclasses of the ``io`` ones that add ``fsync()`` and ``size``.

``parse_mode`` turns ``builtins.open``'s mode string into os.O_* flags.

Imports: dfs.common and this package only.
"""

from __future__ import annotations

import errno as E
import io
import os

from dfs.client.core import FileRef
from dfs.client.file import FileHandle
from dfs.common import errors as err

__all__ = ["AsyncFile", "BufferedRandom", "BufferedReader", "BufferedWriter", "Cursor", "DEFAULT_BUFFER", "RawFile",
           "TextIOWrapper", "parse_mode"]

DEFAULT_BUFFER = 1 << 20  # the io.Buffered* buffer: one RPC-sized piece, not 8 KiB


def parse_mode(mode: str) -> tuple[int, bool, bool]:
    """builtins.open's mode string -> (os.O_* flags, binary, the '+' flag)."""
    chars = set(mode)
    if len(chars) != len(mode) or chars - set("rwaxbt+") or len(chars & set("rwax")) != 1 \
            or {"b", "t"} <= chars:
        raise ValueError(f"invalid mode: {mode!r}")
    plus = "+" in chars
    if "r" in chars:
        flags = os.O_RDWR if plus else os.O_RDONLY
    else:
        flags = (os.O_RDWR if plus else os.O_WRONLY) | os.O_CREAT
        if "w" in chars:
            flags |= os.O_TRUNC
        elif "a" in chars:
            flags |= os.O_APPEND
        else:
            flags |= os.O_EXCL
    return flags, "b" in chars, plus


class Cursor:
    """Position and mode of one open file over its FileRef (shared by the sync and async objects)."""

    def __init__(self, ref: FileRef, path, mode: str, flags: int) -> None:
        self.ref = ref
        self.name = path
        self.mode = mode
        self.flags = flags
        acc = flags & os.O_ACCMODE
        self.can_read = acc in (os.O_RDONLY, os.O_RDWR)
        self.can_write = acc in (os.O_WRONLY, os.O_RDWR)
        self.pos = ref.size if flags & os.O_APPEND else 0

    async def readinto(self, b) -> int:
        if not self.can_read:
            raise io.UnsupportedOperation("not readable")
        n = await self.ref.preadinto(self.pos, b)
        self.pos += n
        return n

    async def write(self, b) -> int:
        if not self.can_write:
            raise io.UnsupportedOperation("not writable")
        n = await self.ref.pwrite(self.pos, b)
        self.pos = self.ref.size if self.ref.append else self.pos + n
        return n

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self.pos + offset
        elif whence == io.SEEK_END:
            pos = self.ref.size + offset
        else:
            raise ValueError(f"invalid whence ({whence})")
        if pos < 0:
            e = err.error_for(E.EINVAL)
            e.filename = self.name
            raise e
        self.pos = pos
        return pos

    async def truncate(self, size: int | None) -> int:
        if not self.can_write:
            raise io.UnsupportedOperation("not writable")
        size = self.pos if size is None else size
        await self.ref.truncate(size)
        return size

    async def flush(self) -> None:
        await self.ref.flush()

    async def fsync(self) -> None:
        await self.ref.fsync()

    async def propagate(self) -> None:
        await self.ref.propagate()

    async def synchronize(self) -> None:
        await self.ref.synchronize()

    async def close(self) -> None:
        await self.ref.close()


class AsyncFile:
    """A binary file for asyncio code: read/readinto/write/seek/tell/truncate/flush/fsync/close,
    pread/pwrite at explicit offsets, ``async with``."""

    def __init__(self, ref: FileRef, path, mode: str, flags: int) -> None:
        self._c = Cursor(ref, path, mode, flags)
        self.closed = False

    @property
    def name(self):
        return self._c.name

    @property
    def mode(self) -> str:
        return self._c.mode

    @property
    def handle(self) -> FileHandle:
        return self._c.ref.handle

    async def read(self, size: int = -1) -> bytes:
        c = self._c
        if size is None or size < 0:
            size = max(0, c.ref.size - c.pos)
        buf = bytearray(size)
        n = await c.readinto(buf)
        del buf[n:]
        return bytes(buf)

    async def readinto(self, b) -> int:
        return await self._c.readinto(b)

    async def write(self, b) -> int:
        return await self._c.write(b)

    async def pread(self, offset: int, size: int) -> bytes:
        return bytes(await self._c.ref.pread(offset, size))

    async def pwrite(self, offset: int, b) -> int:
        return await self._c.ref.pwrite(offset, b)

    async def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._c.seek(offset, whence)

    async def tell(self) -> int:
        return self._c.pos

    async def truncate(self, size: int | None = None) -> int:
        return await self._c.truncate(size)

    async def flush(self) -> None:
        await self._c.flush()

    async def fsync(self) -> None:
        await self._c.fsync()

    async def propagate(self) -> None:
        """lazyio: push this open's writes to the service (see docs/design/client.md, "Lazy mode")."""
        await self._c.propagate()

    async def synchronize(self) -> None:
        """lazyio: see the writes other clients propagated to this file."""
        await self._c.synchronize()

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            await self._c.close()

    async def __aenter__(self) -> AsyncFile:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


class RawFile(io.RawIOBase):
    """The unbuffered io object over a FileRef: each call runs on the client's loop thread
    (``run``) and waits. ``fileno`` raises io.UnsupportedOperation (there is no descriptor).

    Two calls need no trip to the loop thread: a read at or past the size this open sees,
    of an open that cannot write (EOF, as the loop would answer: the size moves only
    with this client's writes and its opens), and, given ``later`` (run a coroutine on
    the loop without waiting: a read-only mode, where a close has nothing to publish or
    report), the close of such an open."""

    def __init__(self, run, cursor: Cursor, later=None) -> None:
        super().__init__()
        self._run = run
        self._later = later
        self._c = cursor
        self.name = cursor.name
        self.mode = cursor.mode.replace("t", "").replace("b", "") + "b"

    @property
    def handle(self) -> FileHandle:
        return self._c.ref.handle

    def readable(self) -> bool:
        return self._c.can_read

    def writable(self) -> bool:
        return self._c.can_write

    def seekable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        self._checkClosed()
        c = self._c
        if not c.can_write and c.can_read and c.pos >= c.ref.size:
            return 0
        return self._run(c.readinto(b))

    def readall(self) -> bytes:
        self._checkClosed()
        c = self._c
        buf = bytearray(max(0, c.ref.size - c.pos))
        n = self._run(c.readinto(buf)) if buf else 0
        del buf[n:]
        return bytes(buf)

    def write(self, b) -> int:
        self._checkClosed()
        return self._run(self._c.write(b))

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._checkClosed()
        return self._c.seek(offset, whence)

    def tell(self) -> int:
        self._checkClosed()
        return self._c.pos

    def truncate(self, size: int | None = None) -> int:
        self._checkClosed()
        return self._run(self._c.truncate(size))

    def flush(self) -> None:
        if not self.closed and self._c.can_write:
            self._run(self._c.flush())

    def fsync(self) -> None:
        self._checkClosed()
        self._run(self._c.fsync())

    def propagate(self) -> None:
        self._checkClosed()
        self._run(self._c.propagate())

    def synchronize(self) -> None:
        self._checkClosed()
        self._run(self._c.synchronize())

    def fileno(self) -> int:
        raise io.UnsupportedOperation("a dfs file has no file descriptor")

    def isatty(self) -> bool:
        return False

    def close(self) -> None:
        if self.closed:
            return
        try:
            super().close()  # flushes
        finally:
            if self._later is not None and not self._c.can_write:
                self._later(self._c.close())
            else:
                self._run(self._c.close())


class BytesRaw(io.RawIOBase):
    """A read-only open over bytes the client already holds (snapshot mode's packed file at
    hand, ``AsyncClient.read_now``): ``RawFile``'s interface for such an open, no call
    going to the loop thread (the file cannot change: a snapshot's)."""

    def __init__(self, data: bytes, name, mode: str) -> None:
        super().__init__()
        self._b = memoryview(data)
        self._pos = 0
        self.name = name
        self.mode = mode.replace("t", "").replace("b", "") + "b"

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        self._checkClosed()
        n = max(0, min(len(b), len(self._b) - self._pos))
        memoryview(b).cast("B")[:n] = self._b[self._pos:self._pos + n]
        self._pos += n
        return n

    def readall(self) -> bytes:
        self._checkClosed()
        out = bytes(self._b[self._pos:])
        self._pos = max(self._pos, len(self._b))
        return out

    def write(self, b) -> int:
        raise io.UnsupportedOperation("write")

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._checkClosed()
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._b)}.get(whence)
        if base is None:
            raise ValueError(f"invalid whence ({whence})")
        if base + offset < 0:
            raise OSError(E.EINVAL, "negative seek position")
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        self._checkClosed()
        return self._pos

    def fileno(self) -> int:
        raise io.UnsupportedOperation("a dfs file has no file descriptor")

    def isatty(self) -> bool:
        return False

    def fsync(self) -> None:
        self._checkClosed()

    def propagate(self) -> None:
        self._checkClosed()

    def synchronize(self) -> None:
        self._checkClosed()


class _Fsync:
    """What the io stack of a dfs file adds to the builtin classes: fsync, size."""

    def _raw(self) -> RawFile:
        return self.raw if hasattr(self, "raw") else self.buffer.raw

    def fsync(self) -> None:
        self.flush()
        self._raw().fsync()

    def propagate(self) -> None:
        """lazyio: push this open's writes to the service (docs/design/client.md, "Lazy mode")."""
        self.flush()
        self._raw().propagate()

    def synchronize(self) -> None:
        """lazyio: see the writes other clients propagated (what this io object's own read
        buffer holds stays: read shared files unbuffered, ``buffering=0``)."""
        self._raw().synchronize()

    @property
    def size(self) -> int:
        """The file's size as this open file sees it (at open, grown by its own writes)."""
        return self._raw()._c.ref.size


class BufferedReader(_Fsync, io.BufferedReader):
    pass


class BufferedWriter(_Fsync, io.BufferedWriter):
    pass


class BufferedRandom(_Fsync, io.BufferedRandom):
    pass


class TextIOWrapper(_Fsync, io.TextIOWrapper):
    pass


def wrap(raw: RawFile, mode: str, plus: bool, binary: bool, buffering: int, encoding, errors, newline):
    """``raw`` wrapped as builtins.open would wrap a descriptor opened with ``mode``."""
    line_buffering = buffering == 1
    if buffering == 0:
        return raw
    size = DEFAULT_BUFFER if buffering in (-1, 1) else buffering
    if plus:
        buf = BufferedRandom(raw, size)
    elif raw.writable():
        buf = BufferedWriter(raw, size)
    else:
        buf = BufferedReader(raw, size)
    if binary:
        return buf
    t = TextIOWrapper(buf, encoding or "utf-8", errors, newline, line_buffering)
    t.mode = mode
    return t
