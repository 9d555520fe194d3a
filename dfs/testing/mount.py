"""Support for the tests that go through a real FUSE mount (tests/posix): the `dfs` command
line in a subprocess, a mount made and removed with `dfs mount` / `dfs umount` whose log
must hold no error, and the tree of small files that real programs (tar, cp -a, rsync)
copy in and out, compared file by file.

    with mounted(cluster.config_path, mp, log, "--lazy") as mp:
        make_tree(src)
        ...
        same_tree(src, os.path.join(mp, "copy"))

Test support: runs `dfs` as a program and reads files as any program would; imports no
dfs package.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator


def dfs_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """`dfs ARGS...` (this interpreter's), its output captured; never raises on its exit code."""
    return subprocess.run([sys.executable, "-m", "dfs.cli", *args], check=False, capture_output=True, text=True,
                          timeout=timeout)


@contextlib.contextmanager
def mounted(config_path: str, mp: str, log: str, *flags: str,
            error_marks: tuple[str, ...] = (" ERROR ",)) -> Iterator[str]:
    """``mp`` mounted (`dfs mount MP --cluster CONFIG --log-file LOG FLAGS...`) for the block; then
    unmounted (lazily with fusermount3 if `dfs umount` fails), and the block fails if a line of
    ``log`` holds one of ``error_marks``."""
    r = dfs_cli("mount", mp, "--cluster", config_path, "--log-file", log, *flags)
    try:
        assert r.returncode == 0, f"dfs mount {' '.join(flags)} failed: {r.stdout}{r.stderr}"
        yield mp
    finally:
        u = dfs_cli("umount", mp)
        if u.returncode != 0:
            subprocess.run(["fusermount3", "-uz", mp], check=False, capture_output=True)
        if os.path.exists(log):
            with open(log, errors="replace") as f:
                errors = [ln for ln in f if any(m in ln for m in error_marks)]
            assert not errors, f"errors in the mount log {log}:\n" + "".join(errors[-20:])


def make_tree(root: str, n: int = 500) -> None:
    """``n`` small files (of 1 to 50 lines) in 20 x 7 directories under ``root``, and a symlink."""
    for i in range(n):
        d = os.path.join(root, f"d{i % 20:02d}", f"e{i % 7}")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"f{i:05d}.txt"), "wb") as f:
            f.write(f"file {i}\n".encode() * (i % 50 + 1))
    os.symlink("d00", os.path.join(root, "link"))


def tree_of(root: str) -> dict:
    """Relative path -> ("l", target) / ("d",) / ("f", bytes) of everything under ``root``."""
    out = {}
    for dp, dns, fns in os.walk(root):
        for n in dns + fns:
            p = os.path.join(dp, n)
            rel = os.path.relpath(p, root)
            if os.path.islink(p):
                out[rel] = ("l", os.readlink(p))
            elif os.path.isdir(p):
                out[rel] = ("d",)
            else:
                with open(p, "rb") as f:
                    out[rel] = ("f", f.read())
    return out


def same_tree(a: str, b: str) -> None:
    """The trees under ``a`` and ``b`` hold the same names, and the same contents under them."""
    ta, tb = tree_of(a), tree_of(b)
    assert ta.keys() == tb.keys()  # the names first: a short message when one is missing
    assert ta == tb
