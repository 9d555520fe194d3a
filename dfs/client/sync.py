"""``Client``: the synchronous face of the library (``dfs.connect()``).

Every ``AsyncClient`` operation, run on the one sync facade's private loop
thread (``SyncFacade``, dfs/client/loop.py). It adds ``open`` with
``builtins.open``'s signature and io stack (dfs/client/fileio.py), ``scandir``
and ``walk`` iterators, ``chdir``/``getcwd`` and ``read_bytes/write_bytes/
read_text/write_text``. Its io objects may be used from any thread but the
loop thread itself. In a mode that answers the namespace from memory (snapshot
mode's manifest) the stat-like reads run on the caller's thread (``now_or_run``),
and so does ``read_bytes`` of a file whose bytes are at hand (``AsyncClient.read_now``).

Imports: dfs.common and this package only.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno as E
import os
from collections import deque
from collections.abc import Iterator
from typing import Any

from dfs.client.core import Core
from dfs.client.fileio import BytesRaw, Cursor, RawFile, parse_mode, wrap
from dfs.client.loop import SyncFacade
from dfs.client.mode import Mode
from dfs.client.paths import AsyncClient, PathLike, ScandirEntry, _oserror
from dfs.client.prefetch import (
    DEFAULT_AHEAD,
    DEFAULT_MAX_BYTES,
    Budget,
    check_window,
    fetch,
    read_batches,
)
from dfs.common import errors as err
from dfs.common.records import Caller

__all__ = ["Client"]


class Client(SyncFacade):
    """The synchronous client: every AsyncClient operation, run on one private loop thread.

    ``open`` returns io objects (``RawFile`` wrapped like ``builtins.open`` wraps a
    descriptor); they may be used from any thread but not from the loop thread itself."""

    aio: AsyncClient

    def __init__(self, make: Any) -> None:
        """``make``: an AsyncClient, or a callable returning one (or a coroutine of one),
        called on the loop thread."""
        super().__init__(make, thread_name="dfs-client")

    @property
    def mode(self) -> Mode:
        return self.aio.mode

    @property
    def caller(self) -> Caller:
        return self.aio.caller

    @property
    def meta(self):
        """The MetaClient (namespace RPCs on inode ids; its coroutines go through ``run``)."""
        return self.aio.meta

    @property
    def core(self) -> Core:
        return self.aio.core

    def now_or_run(self, coro: Any) -> Any:
        """A namespace read: on this thread when the mode answers it from memory (snapshot
        mode: the manifest; no trip to the loop thread, which costs more than the answer),
        else on the loop thread."""
        if getattr(self.aio.mode, "in_memory", False) and not self._closed:
            return _now(coro)
        return self.run(coro)

    def sync(self) -> None:
        """Publish every open file's writes and wait for what this client still sends in the
        background (syncfs)."""
        self.run(self.aio.sync())

    # ------------------------------------------------------------------ files
    def open(self, path: PathLike, mode: str = "r", buffering: int = -1, encoding: str | None = None,
             errors: str | None = None, newline: str | None = None, *, perm: int = 0o666):
        """builtins.open on dfs: the same modes, io stack and errors."""
        flags, binary, plus = parse_mode(mode)
        if binary and (encoding or errors or newline is not None):
            raise ValueError("binary mode doesn't take an encoding, errors or newline argument")
        if buffering == 0 and not binary:
            raise ValueError("can't have unbuffered text I/O")
        if not plus and flags & (os.O_ACCMODE | os.O_CREAT | os.O_TRUNC) == os.O_RDONLY \
                and getattr(self.aio.mode, "in_memory", False) and not self._closed:
            data = _now(self.aio.read_now(path))  # a packed file at hand: no trip to the loop
            if data is not None:
                return wrap(BytesRaw(data, path, mode), mode, plus, binary, buffering, encoding, errors, newline)
        ref = self.run(self.aio.open_handle(path, flags, perm))
        later = self.run_later if getattr(self.mode, "read_only", False) else None
        raw = RawFile(self.run, Cursor(ref, path, mode, flags), later)
        try:
            return wrap(raw, mode, plus, binary, buffering, encoding, errors, newline)
        except BaseException:
            raw.close()
            raise

    def read_bytes(self, path: PathLike) -> bytes:
        if getattr(self.aio.mode, "in_memory", False) and not self._closed:
            got = _now(self.aio.read_now(path))  # a packed file at hand: no trip to the loop
            if got is not None:
                return bytes(got)
        return self.run(self.aio.read_bytes(path))

    def write_bytes(self, path: PathLike, data: bytes) -> int:
        return self.run(self.aio.write_bytes(path, data))

    def read_many(self, paths, *, ahead: int = DEFAULT_AHEAD,
                  max_bytes: int = DEFAULT_MAX_BYTES) -> Iterator[tuple[Any, bytearray]]:
        """Yield ``(path, contents)`` in the order of ``paths`` while the client's loop fetches
        up to ``ahead`` files (``max_bytes``) ahead; an error is raised at its file's turn.
        Closing the iterator early (``break``, ``close()``) cancels what was fetched ahead.
        In a mode with files' bytes at hand (snapshot mode: packed files in the machine's
        cache) those are read on this thread, and only the others go to the loop."""
        check_window(ahead, max_bytes)
        mode = self.aio.mode
        if getattr(mode, "in_memory", False) and getattr(mode, "read_now", None) is not None and not self._closed:
            return self._read_many_at_hand(paths, ahead, max_bytes)
        return self._read_many_on_loop(paths, ahead, max_bytes)

    def _read_many_on_loop(self, paths, ahead: int, max_bytes: int) -> Iterator[tuple[Any, bytearray]]:
        agen = read_batches(self.aio, paths, ahead=ahead, max_bytes=max_bytes)  # a trip per list, not per file
        try:
            while True:
                try:
                    batch = self.run(_anext(agen))
                except StopAsyncIteration:
                    return
                yield from batch
        finally:
            if not self._closed:
                self.run(agen.aclose())

    def _read_many_at_hand(self, paths, ahead: int, max_bytes: int) -> Iterator[tuple[Any, bytearray]]:
        """read_many where ``AsyncClient.read_now`` answers most files on this thread: a trip
        to the loop thread and back for each file cost more than the file (a warm epoch of
        16 KiB files in snapshot mode: 3,300 files/s through the loop, 22,000 on this thread).
        The files it does not have are fetched ahead on the loop as ``read_many`` does,
        within ``ahead`` and ``max_bytes``; everything is handed over in order."""
        aio, loop = self.aio, self.loop
        budget = Budget(max_bytes)
        window: deque[tuple[Any, Any]] = deque()  # (path, bytes | an error | a fetch's Future)
        source = iter(paths)
        seq = 0

        def fill() -> None:
            nonlocal seq
            while len(window) < ahead:
                try:
                    p = next(source)
                except StopIteration:
                    return
                try:
                    got = _now(aio.read_now(p))
                except err.DfsError as e:  # raised at its turn
                    got = e
                if got is None:
                    got = asyncio.run_coroutine_threadsafe(fetch(aio, p, seq, budget), loop)
                    seq += 1
                window.append((p, got))

        try:
            fill()
            while window:
                p, got = window.popleft()
                if isinstance(got, concurrent.futures.Future):
                    got, held = got.result()
                    self.run_later(budget.give(held, advance=True))
                elif isinstance(got, BaseException):
                    raise got
                fill()
                yield p, got
        finally:
            for _, got in window:
                if isinstance(got, concurrent.futures.Future):
                    got.cancel()

    def warmup(self, paths, *, snapshot: str | None = None, evict: bool = False, parallel: int = 16,
               progress: bool | Any = False):
        """Fetch every regular file under ``paths`` into the node-local cache (``evict``: drop
        them); ``AsyncClient.warmup``. ``progress=True``: a progress bar on stderr (tqdm),
        or a ``dfs.client.warmup.Progress``. Returns a ``WarmupResult`` (``.errors``: the
        paths that failed and why; the others were warmed)."""
        from dfs.client.warmup import TqdmProgress

        bar = TqdmProgress("evict" if evict else "warmup") if progress is True else progress or None
        return self.run(self.aio.warmup(paths, snapshot=snapshot, evict=evict, parallel=parallel, progress=bar))

    def cache_stats(self) -> dict[str, int] | None:
        """The node cache's counters in this process (``AsyncClient.cache_stats``), None without one."""
        return self.aio.cache_stats()

    def read_text(self, path: PathLike, encoding: str = "utf-8") -> str:
        return self.read_bytes(path).decode(encoding)

    def write_text(self, path: PathLike, text: str, encoding: str = "utf-8") -> int:
        self.write_bytes(path, text.encode(encoding))
        return len(text)

    # ------------------------------------------------------------------ directories
    def scandir(self, path: PathLike = ".") -> _ScandirIterator:
        return _ScandirIterator(self.run(self.aio.scandir(path, _client=self)))

    def walk(self, top: PathLike, topdown: bool = True, onerror=None,
             followlinks: bool = False) -> Iterator[tuple[Any, list, list]]:
        """os.walk; with topdown, pruning ``dirnames`` in place is honoured."""
        try:
            entries = self.scandir(top)
        except OSError as e:
            if onerror is not None:
                onerror(e)
            return
        dirs, files = [], []
        with entries:
            for e in entries:
                (dirs if e.is_dir(follow_symlinks=followlinks) else files).append(e.name)
        if topdown:
            yield top, dirs, files
        for name in dirs:
            yield from self.walk(os.path.join(top, name), topdown, onerror, followlinks)
        if not topdown:
            yield top, dirs, files

    def chdir(self, path: PathLike) -> None:
        p = self.aio._abs(path)
        if not self.isdir(p):
            raise _oserror(E.ENOTDIR if self.exists(p) else E.ENOENT, path)
        self.aio.cwd = os.path.normpath(p)

    def getcwd(self) -> str:
        return os.fsdecode(self.aio.cwd)


async def _anext(agen):
    return await agen.__anext__()


def _now(coro: Any) -> Any:
    """Run ``coro``, which never waits, to its end on this thread."""
    try:
        coro.send(None)
    except StopIteration as e:
        return e.value
    coro.close()
    raise RuntimeError(f"{coro.__qualname__} waited where its mode answers from memory")


def _sync(name: str, in_memory: bool = False):
    def call(self, *a, **kw):
        return self.now_or_run(getattr(self.aio, name)(*a, **kw)) if in_memory else \
            self.run(getattr(self.aio, name)(*a, **kw))

    call.__name__ = name
    call.__qualname__ = f"Client.{name}"
    call.__doc__ = getattr(AsyncClient, name).__doc__
    return call


# what answers from the mode's memory without waiting (a listing pages with a prefetch task: not these)
_READS = ("stat", "lstat", "getattr", "exists", "isdir", "isfile", "islink", "readlink", "statfs", "statvfs",
          "getxattr", "listxattr")
for _n in (*_READS, "readdir", "listdir", "setxattr", "removexattr", "mkdir", "makedirs", "remove", "unlink", "rmdir", "rename",
           "replace", "link", "symlink", "chmod", "chown", "utime", "truncate", "set_lazy", "layout", "set_layout", "snapshot_create",
           "snapshot_list", "snapshot_info", "snapshot_delete", "snapshot_diff"):
    setattr(Client, _n, _sync(_n, _n in _READS))


class _ScandirIterator:
    def __init__(self, entries: list[ScandirEntry]) -> None:
        self._it = iter(entries)

    def __iter__(self):
        return self

    def __next__(self) -> ScandirEntry:
        return next(self._it)

    def close(self) -> None:
        self._it = iter(())

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
