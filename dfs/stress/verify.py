"""The end of a stress run: the tree under the run's root compared with the model,
once the cluster answers again.

May import: dfs.common and dfs.stress (the client is handed in).
"""

from __future__ import annotations

import stat as S
import time
from collections import Counter

from dfs.common.ids import shard_of
from dfs.stress.model import Differences, Dir, Model, describe
from dfs.stress.worker import transient


def verify(fs, root: str, model: Model, diffs: Differences) -> dict:
    """Compare the tree under ``root`` with the model; returns what was checked."""
    checked = Counter()
    read: set[int] = set()  # model node ids whose content was compared
    inos: dict[int, int] = {}  # model node id -> inode number seen
    owner: dict[int, int] = {}  # inode number -> model node id

    def d(what: str, path: str, **kw) -> None:
        diffs.add(kind="verify", what=what, path=path, **kw)

    def walk(rel: str, mdir: Dir) -> None:
        path = f"{root}/{rel}" if rel else root
        entries = {e.name: e for e in fs.scandir(path)}
        want, have = set(mdir.entries), set(entries)
        for name in sorted(want - have):
            d("missing", f"{rel}/{name}".lstrip("/"))
        for name in sorted(have - want):
            d("extra", f"{rel}/{name}".lstrip("/"))
        st = fs.lstat(path)
        checked["dirs"] += 1
        checked[f"dirs on shard {shard_of(st.st_ino)}"] += 1
        if st.st_nlink != 2 + mdir.subdirs():
            d("directory link count", rel or ".", expected=2 + mdir.subdirs(), actual=st.st_nlink)
        for name in sorted(want & have):
            m = mdir.entries[name]
            p = f"{rel}/{name}".lstrip("/")
            st = fs.lstat(f"{root}/{p}")
            if isinstance(m, Dir):
                if not S.S_ISDIR(st.st_mode):
                    d("type", p, expected="directory", actual=oct(S.S_IFMT(st.st_mode)))
                    continue
                walk(p, m)
                continue
            if not S.S_ISREG(st.st_mode):
                d("type", p, expected="file", actual=oct(S.S_IFMT(st.st_mode)))
                continue
            checked["names"] += 1
            if inos.setdefault(m.id, st.st_ino) != st.st_ino:
                d("hard links of one file have different inodes", p, history=m.history)
            if owner.setdefault(st.st_ino, m.id) != m.id:
                d("two files share an inode", p, history=m.history)
            if st.st_nlink != m.nlink:
                d("file link count", p, expected=m.nlink, actual=st.st_nlink, history=m.history)
            if st.st_size != len(m.data):
                d("size", p, expected=len(m.data), actual=st.st_size, history=m.history)
            if m.id not in read:
                read.add(m.id)
                got = fs.read_bytes(f"{root}/{p}")
                checked["files"] += 1
                checked["bytes"] += len(got)
                if got != m.data:
                    d("content", p, ino=st.st_ino, **describe(bytes(m.data), got), history=m.history)

    walk("", model.root)
    return dict(checked)


def wait_usable(fs, root: str, timeout: float = 180.0) -> None:
    """Until the run's root answers (the cluster is back)."""
    end = time.monotonic() + timeout
    while True:
        try:
            fs.listdir(root)
            return
        except OSError as e:
            if not transient(e) or time.monotonic() > end:
                raise
        time.sleep(0.5)  # polling interval of a deadline-bounded wait
