"""fsspec filesystem for the ``dfs://`` protocol (registered by an entry point).

    import fsspec
    with fsspec.open("dfs:///data/x.csv", "w") as f: ...              # the local `dfs cluster up` cluster
    fs = fsspec.filesystem("dfs", mgmt=["127.0.0.1:7000"])             # or cluster="path/cluster.toml"
    pandas.read_parquet("dfs:///data/t.parquet", storage_options={"mgmt": "127.0.0.1:7000"})

Paths: ``dfs:///a/b`` and ``dfs://a/b`` both name ``/a/b``: the part after
``dfs://`` is the absolute path, a "host" is just its first component (as for
fsspec's memory and local filesystems). The cluster is chosen by the storage
options (``mgmt``, ``cluster``, ``data``, see ``dfs.client.connect.find_cluster``), not
by the URL. Files are the ``Client``'s io objects (``open`` semantics, not
fsspec's block cache): writes go out as they are buffered and are visible to
others after ``close`` (close-to-open); there are no transactions.

Imports: dfs.common, dfs.route, this package; fsspec.
"""

from __future__ import annotations

import datetime as dt
import os
import stat as S

from fsspec.spec import AbstractFileSystem

from dfs.client.connect import connect
from dfs.client.sync import Client


def _kind(mode: int) -> str:
    if S.S_ISDIR(mode):
        return "directory"
    if S.S_ISREG(mode):
        return "file"
    return "other"


class DfsFileSystem(AbstractFileSystem):
    protocol = "dfs"
    root_marker = "/"
    sep = "/"

    def __init__(self, cluster: str | None = None, *, mgmt=None, data: str | None = None, client: Client | None = None,
                 uid: int | None = None, gid: int | None = None, ttl: float = 1.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self._own = client is None
        self.client = client if client is not None else connect(cluster, mgmt=mgmt, data=data, uid=uid, gid=gid,
                                                                ttl=ttl)

    @classmethod
    def _strip_protocol(cls, path) -> str:
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        path = os.fspath(path)
        if path.startswith("dfs://"):
            path = path[len("dfs://"):]
        elif path.startswith("dfs:"):
            path = path[len("dfs:"):]
        path = "/" + path.lstrip("/")
        while "//" in path:
            path = path.replace("//", "/")
        return path.rstrip("/") or "/"

    def unstrip_protocol(self, name: str) -> str:
        return "dfs://" + self._strip_protocol(name)

    @staticmethod
    def _get_kwargs_from_urls(path):
        return {}

    # ------------------------------------------------------------------ listing and info
    def _info_of(self, path: str, st: os.stat_result, link: bool = False) -> dict:
        return {
            "name": path,
            "size": st.st_size if not S.S_ISDIR(st.st_mode) else 0,
            "type": _kind(st.st_mode),
            "mode": st.st_mode,
            "ino": st.st_ino,
            "nlink": st.st_nlink,
            "uid": st.st_uid,
            "gid": st.st_gid,
            "islink": link,
            "mtime": st.st_mtime,
            "created": st.st_ctime,
        }

    def info(self, path, **kwargs) -> dict:
        path = self._strip_protocol(path)
        lst = self.client.lstat(path)
        if S.S_ISLNK(lst.st_mode):
            try:
                out = self._info_of(path, self.client.stat(path), link=True)
            except FileNotFoundError:  # a dangling symlink
                out = self._info_of(path, lst, link=True)
            out["destination"] = self.client.readlink(path)
            return out
        return self._info_of(path, lst)

    def ls(self, path, detail: bool = True, **kwargs):
        path = self._strip_protocol(path)
        st = self.client.stat(path)
        if not S.S_ISDIR(st.st_mode):
            entries = [self.info(path)]
            return entries if detail else [path]
        out = []
        with self.client.scandir(path) as it:
            for e in it:
                full = path.rstrip("/") + "/" + e.name
                if not detail:
                    out.append(full)
                    continue
                if e.is_symlink():
                    try:
                        out.append(self.info(full))
                    except FileNotFoundError:
                        continue
                else:
                    out.append(self._info_of(full, e.stat(follow_symlinks=False)))
        return sorted(out, key=lambda x: x["name"]) if detail else sorted(out)

    def exists(self, path, **kwargs) -> bool:
        return self.client.exists(self._strip_protocol(path))

    def isdir(self, path) -> bool:
        return self.client.isdir(self._strip_protocol(path))

    def isfile(self, path) -> bool:
        return self.client.isfile(self._strip_protocol(path))

    def islink(self, path) -> bool:
        return self.client.islink(self._strip_protocol(path))

    def lexists(self, path, **kwargs) -> bool:
        try:
            self.client.lstat(self._strip_protocol(path))
            return True
        except (FileNotFoundError, NotADirectoryError):
            return False

    def created(self, path) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.client.stat(self._strip_protocol(path)).st_ctime, tz=dt.timezone.utc)

    def modified(self, path) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.client.stat(self._strip_protocol(path)).st_mtime, tz=dt.timezone.utc)

    # ------------------------------------------------------------------ namespace changes
    def mkdir(self, path, create_parents: bool = True, **kwargs) -> None:
        path = self._strip_protocol(path)
        if self.exists(path):
            raise FileExistsError(path)
        if create_parents:
            self.client.makedirs(path, exist_ok=True)
        else:
            self.client.mkdir(path)

    def makedirs(self, path, exist_ok: bool = False) -> None:
        self.client.makedirs(self._strip_protocol(path), exist_ok=exist_ok)

    def rmdir(self, path) -> None:
        self.client.rmdir(self._strip_protocol(path))

    def rm_file(self, path) -> None:
        self.client.remove(self._strip_protocol(path))

    _rm = rm_file

    def rm(self, path, recursive: bool = False, maxdepth=None) -> None:
        paths = self.expand_path(path, recursive=recursive, maxdepth=maxdepth)
        for p in sorted(paths, key=lambda p: (p.count("/"), p), reverse=True):  # children before parents
            if self.client.isdir(p) and not self.client.islink(p):
                if not recursive:
                    raise IsADirectoryError(p)
                self.client.rmdir(p)
            else:
                self.client.remove(p)

    def mv(self, path1, path2, recursive: bool = False, maxdepth=None, **kwargs) -> None:
        """A single source is renamed (atomic, metadata only); anything else is copy + rm."""
        if isinstance(path1, str) and isinstance(path2, str) and not self._has_magic(path1) and maxdepth is None:
            src, dst = self._strip_protocol(path1), self._strip_protocol(path2)
            if src == dst:
                return
            if self.isdir(dst):
                dst = dst.rstrip("/") + "/" + src.rstrip("/").rsplit("/", 1)[-1]
            elif path2.endswith("/"):
                self.makedirs(dst, exist_ok=True)
                dst = dst.rstrip("/") + "/" + src.rstrip("/").rsplit("/", 1)[-1]
            if self.isdir(src) and not recursive:
                raise IsADirectoryError(path1)
            self.client.rename(src, dst)
            return
        super().mv(path1, path2, recursive=recursive, maxdepth=maxdepth, **kwargs)

    @staticmethod
    def _has_magic(p: str) -> bool:
        return any(c in p for c in "*?[")

    def cp_file(self, path1, path2, **kwargs) -> None:
        src, dst = self._strip_protocol(path1), self._strip_protocol(path2)
        if self.isdir(src):
            self.makedirs(dst, exist_ok=True)
            return
        self._parent_dirs(dst)
        with self.client.open(src, "rb") as fi, self.client.open(dst, "wb") as fo:
            while True:
                b = fi.read(4 << 20)
                if not b:
                    break
                fo.write(b)

    def touch(self, path, truncate: bool = True, **kwargs) -> None:
        path = self._strip_protocol(path)
        if truncate or not self.exists(path):
            self._parent_dirs(path)
            with self.client.open(path, "wb"):
                pass
        else:
            self.client.utime(path)

    def chmod(self, path, mode: int) -> None:
        self.client.chmod(self._strip_protocol(path), mode)

    def symlink(self, source, destination, **kwargs) -> None:
        self.client.symlink(self._strip_protocol(source), self._strip_protocol(destination))

    def link(self, source, destination, **kwargs) -> None:
        self.client.link(self._strip_protocol(source), self._strip_protocol(destination))

    # ------------------------------------------------------------------ bytes
    def _open(self, path, mode: str = "rb", block_size=None, autocommit: bool = True, cache_options=None,
              **kwargs):
        path = self._strip_protocol(path)
        if not autocommit:
            raise NotImplementedError("dfs files have no transactions (autocommit only)")
        if "w" in mode or "a" in mode or "x" in mode:
            self._parent_dirs(path)
        buffering = block_size if block_size else -1
        return self.client.open(path, mode, buffering=buffering)

    auto_mkdir = True  # fsspec's remote stores create parents implicitly; so do we for writes

    def _parent_dirs(self, path: str) -> None:
        parent = path.rsplit("/", 1)[0] or "/"
        if self.auto_mkdir and not self.client.isdir(parent):
            self.client.makedirs(parent, exist_ok=True)

    def cat_file(self, path, start=None, end=None, **kwargs) -> bytes:
        path = self._strip_protocol(path)
        with self.client.open(path, "rb") as f:
            size = f.size
            if start is not None:
                f.seek(start if start >= 0 else max(0, size + start))
            if end is not None:
                if end < 0:
                    end = size + end
                return f.read(max(0, end - f.tell()))
            return f.read()

    def pipe_file(self, path, value, mode: str = "overwrite", **kwargs) -> None:
        path = self._strip_protocol(path)
        self._parent_dirs(path)
        with self.client.open(path, "xb" if mode == "create" else "wb") as f:
            f.write(value)

    def close(self) -> None:
        if self._own:
            self.client.close()
