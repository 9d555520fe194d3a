"""A pass-through FUSE file system that loses what was not fsynced, for power-cut tests
(the LazyFS approach). Test-only.

    python -m dfs.testing.powercut BACKING MOUNTPOINT

Everything under MOUNTPOINT is BACKING's, except file data: writes (and
truncations) are kept in this process's memory, page by page, and reach the
backing directory only when the file is fsynced (``fsync``/``fdatasync``;
``msync`` of a mapping arrives as writes then an fsync). Reads see the
unsynced data. Namespace operations (create, mkdir, rename, link, unlink)
go to the backing directory at once, as a journaling file system makes them
durable in order; what they cannot make durable is file contents nobody
synced.

A power cut is: kill every process writing under the mount, then kill this
process (``PowerCut.cut``): its memory, the unsynced data, is gone, and the
kernel drops the mount's page cache with the connection (unsynced ``mmap``
writes included). Mounting again over the same backing directory shows what
a machine would find after the power came back.

Hard links share their data (one page map per backing inode). Not supported:
extended attributes, special files; ``O_DIRECT`` is treated as buffered.
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import stat
import subprocess
import sys
import time

import pyfuse3
import trio

PAGE = 4096


class _Data:
    """Unsynced contents of one backing inode: dirty pages, the logical size, and how
    much of the backing file is still its contents (a truncation cuts it)."""

    __slots__ = ("pages", "size", "valid")

    def __init__(self, size: int) -> None:
        self.pages: dict[int, bytearray] = {}
        self.size = size
        self.valid = size


class PowerCutFS(pyfuse3.Operations):
    enable_writeback_cache = False

    def __init__(self, backing: str) -> None:
        super().__init__()
        self.root = os.path.realpath(backing)
        self.paths: dict[int, str] = {pyfuse3.ROOT_INODE: self.root}  # fuse inode -> a backing path
        self.names: dict[int, set[str]] = {}  # fuse inode -> the backing paths it was seen under (hard links)
        self.fuse_of: dict[int, int] = {}   # backing st_ino -> fuse inode
        self.backing_of: dict[int, int] = {}  # fuse inode -> backing st_ino
        self.lookups: dict[int, int] = {}
        self.data: dict[int, _Data] = {}    # fuse inode -> unsynced contents
        self.fds: dict[int, tuple[int, int]] = {}  # fh -> (fuse inode, fd)
        self._next_ino = pyfuse3.ROOT_INODE + 1
        self._next_fh = 1
        st = os.lstat(self.root)
        self.fuse_of[st.st_ino] = pyfuse3.ROOT_INODE
        self.backing_of[pyfuse3.ROOT_INODE] = st.st_ino

    # ------------------------------------------------------------------ inodes and paths
    def _path(self, ino: int) -> str:
        p = self.paths.get(ino)
        if p is None:
            raise pyfuse3.FUSEError(errno.ESTALE)
        return p

    def _child(self, parent: int, name: bytes) -> str:
        return os.path.join(self._path(parent), os.fsdecode(name))

    def _inode(self, path: str, st: os.stat_result) -> int:
        ino = self.fuse_of.get(st.st_ino)
        if ino is None:
            ino = self._next_ino
            self._next_ino += 1
            self.fuse_of[st.st_ino] = ino
            self.backing_of[ino] = st.st_ino
        self.paths[ino] = path
        self.names.setdefault(ino, set()).add(path)
        return ino

    def _entry(self, ino: int, st: os.stat_result) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        for k in ("st_mode", "st_nlink", "st_uid", "st_gid", "st_rdev", "st_size", "st_atime_ns",
                  "st_mtime_ns", "st_ctime_ns"):
            setattr(e, k, getattr(st, k))
        d = self.data.get(ino)
        if d is not None:
            e.st_size = d.size
        e.st_ino = ino
        e.st_blksize = 4096
        e.st_blocks = (e.st_size + 511) // 512
        e.generation = 0
        e.entry_timeout = 0
        e.attr_timeout = 0
        return e

    def _lstat(self, path: str) -> os.stat_result:
        try:
            return os.lstat(path)
        except OSError as ex:
            raise pyfuse3.FUSEError(ex.errno) from None

    def _gone(self, path: str) -> None:
        """Before ``path`` is unlinked or replaced: forget its inode if this is its last name,
        else keep it under another of its names (a hard link's inode outlives a name)."""
        try:
            st = os.lstat(path)
        except OSError:
            return
        if stat.S_ISDIR(st.st_mode):
            return
        if st.st_nlink <= 1:
            ino = self.fuse_of.pop(st.st_ino, None)
            if ino is not None:
                self.backing_of.pop(ino, None)
                self.data.pop(ino, None)
                self.names.pop(ino, None)
            return
        ino = self.fuse_of.get(st.st_ino)
        if ino is None:
            return
        names = self.names.get(ino, set())
        names.discard(path)
        if self.paths.get(ino) == path:
            for other in names:
                try:
                    if os.lstat(other).st_ino == st.st_ino:
                        self.paths[ino] = other
                        break
                except OSError:
                    continue

    async def lookup(self, parent_inode, name, ctx=None):
        path = self._child(parent_inode, name)
        st = self._lstat(path)
        ino = self._inode(path, st)
        self.lookups[ino] = self.lookups.get(ino, 0) + 1
        return self._entry(ino, st)

    async def forget(self, inode_list):
        for ino, n in inode_list:
            left = self.lookups.get(ino, 0) - n
            if left > 0:
                self.lookups[ino] = left
            else:
                self.lookups.pop(ino, None)

    async def getattr(self, inode, ctx=None):
        return self._entry(inode, self._lstat(self._path(inode)))

    async def setattr(self, inode, attr, fields, fh, ctx):
        path = self._path(inode)
        try:
            if fields.update_size:
                self._truncate(inode, path, attr.st_size)
            if fields.update_mode:
                os.chmod(path, stat.S_IMODE(attr.st_mode))
            if fields.update_uid or fields.update_gid:
                os.chown(path, attr.st_uid if fields.update_uid else -1, attr.st_gid if fields.update_gid else -1,
                         follow_symlinks=False)
            if fields.update_atime or fields.update_mtime:
                st = os.lstat(path)
                os.utime(path, ns=(attr.st_atime_ns if fields.update_atime else st.st_atime_ns,
                                   attr.st_mtime_ns if fields.update_mtime else st.st_mtime_ns),
                         follow_symlinks=False)
        except OSError as ex:
            raise pyfuse3.FUSEError(ex.errno) from None
        return await self.getattr(inode)

    async def readlink(self, inode, ctx):
        try:
            return os.fsencode(os.readlink(self._path(inode)))
        except OSError as ex:
            raise pyfuse3.FUSEError(ex.errno) from None

    # ------------------------------------------------------------------ namespace (durable at once)
    async def mkdir(self, parent_inode, name, mode, ctx):
        path = self._child(parent_inode, name)
        try:
            os.mkdir(path, stat.S_IMODE(mode))
        except OSError as ex:
            raise pyfuse3.FUSEError(ex.errno) from None
        return await self.lookup(parent_inode, name)

    async def symlink(self, parent_inode, name, target, ctx):
        path = self._child(parent_inode, name)
        try:
            os.symlink(os.fsdecode(target), path)
        except OSError as ex:
            raise pyfuse3.FUSEError(ex.errno) from None
        return await self.lookup(parent_inode, name)

    async def link(self, inode, new_parent_inode, new_name, ctx):
        path = self._child(new_parent_inode, new_name)
        try:
            os.link(self._path(inode), path)
        except OSError as ex:
            raise pyfuse3.FUSEError(ex.errno) from None
        return await self.lookup(new_parent_inode, new_name)

    async def unlink(self, parent_inode, name, ctx):
        path = self._child(parent_inode, name)
        self._gone(path)
        try:
            os.unlink(path)
        except OSError as ex:
            raise pyfuse3.FUSEError(ex.errno) from None

    async def rmdir(self, parent_inode, name, ctx):
        try:
            os.rmdir(self._child(parent_inode, name))
        except OSError as ex:
            raise pyfuse3.FUSEError(ex.errno) from None

    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        old = self._child(parent_inode_old, name_old)
        new = self._child(parent_inode_new, name_new)
        if flags:
            raise pyfuse3.FUSEError(errno.EINVAL)
        st = self._lstat(old)
        self._gone(new)
        try:
            os.rename(old, new)
        except OSError as ex:
            raise pyfuse3.FUSEError(ex.errno) from None
        ino = self.fuse_of.get(st.st_ino)
        if ino is not None:
            self.paths[ino] = new
            names = self.names.setdefault(ino, set())
            names.discard(old)
            names.add(new)
        if stat.S_ISDIR(st.st_mode):  # paths under it moved too
            for i, p in list(self.paths.items()):
                if p.startswith(old + os.sep):
                    self.paths[i] = new + p[len(old):]

    async def opendir(self, inode, ctx):
        return inode

    async def readdir(self, fh, start_id, token):
        path = self._path(fh)
        try:
            names = sorted(os.listdir(path))
        except OSError as ex:
            raise pyfuse3.FUSEError(ex.errno) from None
        for i, name in enumerate(names[start_id:], start_id):
            p = os.path.join(path, name)
            try:
                st = os.lstat(p)
            except FileNotFoundError:
                continue
            ino = self._inode(p, st)
            if not pyfuse3.readdir_reply(token, os.fsencode(name), self._entry(ino, st), i + 1):
                return
            self.lookups[ino] = self.lookups.get(ino, 0) + 1

    async def releasedir(self, fh):
        pass

    async def fsyncdir(self, fh, datasync):
        fd = os.open(self._path(fh), os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    async def statfs(self, ctx):
        s = os.statvfs(self.root)
        out = pyfuse3.StatvfsData()
        for k in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree", "f_favail"):
            setattr(out, k, getattr(s, k))
        out.f_namemax = s.f_namemax
        return out

    # ------------------------------------------------------------------ files (data kept until fsync)
    def _fh(self, ino: int, fd: int) -> pyfuse3.FileInfo:
        fh = self._next_fh
        self._next_fh += 1
        self.fds[fh] = (ino, fd)
        return pyfuse3.FileInfo(fh=fh, direct_io=False, keep_cache=False)

    @staticmethod
    def _flags(flags: int) -> int:
        f = flags & ~(os.O_APPEND | os.O_TRUNC | getattr(os, "O_DIRECT", 0))
        if f & os.O_ACCMODE == os.O_WRONLY:
            f = (f & ~os.O_ACCMODE) | os.O_RDWR  # read-modify-write of pages at fsync
        return f

    async def open(self, inode, flags, ctx):
        path = self._path(inode)
        try:
            fd = os.open(path, self._flags(flags) & ~os.O_CREAT)
        except OSError as ex:
            raise pyfuse3.FUSEError(ex.errno) from None
        if flags & os.O_TRUNC:
            self._truncate(inode, path, 0)
        return self._fh(inode, fd)

    async def create(self, parent_inode, name, mode, flags, ctx):
        path = self._child(parent_inode, name)
        try:
            fd = os.open(path, self._flags(flags) | os.O_CREAT | os.O_EXCL, stat.S_IMODE(mode))
        except OSError as ex:
            raise pyfuse3.FUSEError(ex.errno) from None
        st = os.fstat(fd)
        ino = self._inode(path, st)
        self.data.pop(ino, None)
        self.lookups[ino] = self.lookups.get(ino, 0) + 1
        return self._fh(ino, fd), self._entry(ino, st)

    def _contents(self, ino: int, path: str) -> _Data:
        d = self.data.get(ino)
        if d is None:
            d = self.data[ino] = _Data(os.lstat(path).st_size)
        return d

    def _truncate(self, ino: int, path: str, size: int) -> None:
        d = self._contents(ino, path)
        if size < d.size:
            last, cut = divmod(size, PAGE)
            for p in [p for p in d.pages if p > last or (p == last and cut == 0)]:
                del d.pages[p]
            if cut and last in d.pages:
                d.pages[last][cut:] = bytes(PAGE - cut)
        d.size = size
        d.valid = min(d.valid, size)

    def _page(self, ino: int, d: _Data, path: str, p: int) -> bytearray:
        pg = d.pages.get(p)
        if pg is None:
            pg = bytearray(PAGE)
            n = min(PAGE, d.valid - p * PAGE)
            if n > 0:
                with open(path, "rb") as f:
                    f.seek(p * PAGE)
                    got = f.read(n)
                pg[:len(got)] = got
            d.pages[p] = pg
        return pg

    async def read(self, fh, off, size):
        ino, fd = self.fds[fh]
        d = self.data.get(ino)
        if d is None:
            return os.pread(fd, size, off)
        end = min(off + size, d.size)
        out = bytearray()
        pos = off
        while pos < end:
            p, o = divmod(pos, PAGE)
            n = min(PAGE - o, end - pos)
            pg = d.pages.get(p)
            if pg is not None:
                out += pg[o:o + n]
            else:
                got = os.pread(fd, max(0, min(n, d.valid - pos)), pos) if pos < d.valid else b""
                out += got + bytes(n - len(got))
            pos += n
        return bytes(out)

    async def write(self, fh, off, buf):
        ino, _ = self.fds[fh]
        path = self._path(ino)
        d = self._contents(ino, path)
        pos, i = off, 0
        while i < len(buf):
            p, o = divmod(pos, PAGE)
            n = min(PAGE - o, len(buf) - i)
            pg = self._page(ino, d, path, p)
            pg[o:o + n] = buf[i:i + n]
            pos += n
            i += n
        d.size = max(d.size, off + len(buf))
        return len(buf)

    async def flush(self, fh):
        pass

    async def release(self, fh):
        _, fd = self.fds.pop(fh)
        os.close(fd)

    async def fsync(self, fh, datasync):
        ino, fd = self.fds[fh]
        d = self.data.pop(ino, None)
        try:
            if d is not None:
                # through a descriptor of its own: the fsync may come on a read-only open
                wfd = os.open(self._path(ino), os.O_WRONLY)
                try:
                    os.ftruncate(wfd, d.valid)  # what a truncation cut reads as zeros from here
                    for p, pg in sorted(d.pages.items()):
                        n = min(PAGE, d.size - p * PAGE)
                        if n > 0:
                            os.pwrite(wfd, bytes(pg[:n]), p * PAGE)
                    os.ftruncate(wfd, d.size)
                    os.fsync(wfd)
                finally:
                    os.close(wfd)
            os.fsync(fd)
        except OSError as e:
            if d is not None:
                self.data.setdefault(ino, d)  # not on disk: still lost at a cut
            raise pyfuse3.FUSEError(e.errno) from None


def serve(backing: str, mountpoint: str) -> None:
    fs = PowerCutFS(backing)
    opts = set(pyfuse3.default_options) | {"fsname=powercut", "allow_other"}
    opts.discard("default_permissions")
    pyfuse3.init(fs, mountpoint, opts)
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=True)


class PowerCut:
    """A power-cut file system mounted in a child process: ``start()``, ``cut()`` (lose
    everything not fsynced; mounted again), ``stop()``."""

    def __init__(self, backing: str, mountpoint: str) -> None:
        self.backing, self.mountpoint = backing, mountpoint
        self.proc: subprocess.Popen | None = None
        os.makedirs(backing, exist_ok=True)
        os.makedirs(mountpoint, exist_ok=True)

    def start(self, timeout: float = 30.0) -> PowerCut:
        self.proc = subprocess.Popen([sys.executable, "-m", "dfs.testing.powercut", self.backing, self.mountpoint],
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not os.path.ismount(self.mountpoint):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"power-cut file system did not mount at {self.mountpoint}")
            time.sleep(0.02)  # polling interval of a deadline-bounded wait
        return self

    def _kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self.proc = None
        # the dead daemon's mount: detach it (the kernel drops its page cache with it)
        subprocess.run(["fusermount3", "-u", "-z", self.mountpoint], stderr=subprocess.DEVNULL, check=False)
        subprocess.run(["umount", "-l", self.mountpoint], stderr=subprocess.DEVNULL, check=False)

    def cut(self) -> None:
        """The power goes out and comes back: every process writing under the mount must be
        dead already (their unsynced writes are lost with this file system's memory)."""
        self._kill()
        self.start()

    def stop(self) -> None:
        self._kill()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("backing")
    ap.add_argument("mountpoint")
    a = ap.parse_args(argv)
    serve(a.backing, a.mountpoint)
    return 0


if __name__ == "__main__":
    sys.exit(main())
