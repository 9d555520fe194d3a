"""`dfs mount MOUNTPOINT` / `dfs umount MOUNTPOINT`: a cluster as a FUSE mount.

`mount` runs in the background by default: it starts a detached copy of
itself with --foreground and a log file, and returns once the mount is live
(or fails with the log's tail). `umount` unmounts with fusermount3 (lazily as
a fallback) and waits for the serving process to end; it also clears the
mount point a crashed process left behind ("Transport endpoint is not
connected").

The client token comes from --token-file, $DFS_TOKEN / $DFS_TOKEN_FILE or the
cluster file (``dfs.client.connect.find_credentials``); it never goes on a command
line: the background copy is given the cluster file or the token file, and
inherits the environment.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import click

from dfs.cli.cluster import _alive, _cmdline
from dfs.common.config import DEFAULT_DATA

STATE_DIR = os.path.expanduser("~/.local/share/dfs/mounts")


def _canon(path: str) -> str:
    """The absolute path with its parent's symlinks resolved; the last component is never
    looked up (a lookup on a hung or crashed mount would block or fail)."""
    a = os.path.abspath(path)
    return os.path.join(os.path.realpath(os.path.dirname(a)), os.path.basename(a))


def _state_path(mountpoint: str) -> str:
    key = hashlib.sha1(mountpoint.encode()).hexdigest()[:16]
    return os.path.join(STATE_DIR, f"{key}.json")


def _default_log(mountpoint: str) -> str:
    return _state_path(mountpoint)[:-5] + ".log"


def _read_state(mountpoint: str) -> dict | None:
    try:
        with open(_state_path(mountpoint)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def local_mounts() -> list[dict]:
    """The dfs mounts of this machine whose serving process is alive: their state files
    (mountpoint, pid, log, mgmt; a snapshot mount's ``snapshot`` and ``snapshot_state``,
    "ready" or "deleted")."""
    out = []
    try:
        names = sorted(os.listdir(STATE_DIR))
    except OSError:
        return out
    for n in names:
        if not n.endswith(".json"):
            continue
        try:
            with open(os.path.join(STATE_DIR, n)) as f:
                st = json.load(f)
        except (OSError, ValueError):
            continue
        if st.get("pid") and _alive(st["pid"]):
            out.append(st)
    return out


def _cluster_file(cluster_path: str) -> str:
    from dfs.common.config import locate

    try:
        return locate(cluster_path).require_file()
    except FileNotFoundError as e:
        raise click.ClickException(f"{e}: give --mgmt or --cluster") from None


def _resolve_mgmt(mgmt: tuple[str, ...], cluster_path: str) -> list[str]:
    from dfs.common.config import locate

    try:
        return locate(cluster_path, mgmt=[a for m in mgmt for a in m.split(",") if a] or None).mgmt_addresses()
    except FileNotFoundError as e:
        raise click.ClickException(f"{e}: give --mgmt or --cluster") from None


def _credentials(mgmt: tuple[str, ...], cluster_path: str, token_file: str | None):
    from dfs.client.connect import find_credentials

    try:
        if mgmt:
            return find_credentials(mgmt=_resolve_mgmt(mgmt, cluster_path), token_file=token_file)
        return find_credentials(_cluster_file(cluster_path), token_file=token_file)
    except (OSError, ValueError) as e:
        raise click.ClickException(f"client token: {e}") from None


def _tail(path: str, n: int = 20) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


@click.command()
@click.argument("mountpoint", type=click.Path(file_okay=False))
@click.option("--mgmt", multiple=True, help="mgmt replica address(es) host:port (repeat or comma-separate)")
@click.option("--cluster", "cluster_path", default=DEFAULT_DATA, show_default=True,
              help="a cluster.toml or the folder holding it (used without --mgmt)")
@click.option("--token-file", default=None, type=click.Path(dir_okay=False, exists=True),
              help="a file holding the client token [default: $DFS_TOKEN, $DFS_TOKEN_FILE, the cluster file's]")
@click.option("-f", "--foreground", is_flag=True, help="serve in this process (debugging)")
@click.option("--log-file", default=None, help="log file [default: ~/.local/share/dfs/mounts/<id>.log]")
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
@click.option("--entry-timeout", default=1.0, show_default=True, type=click.FloatRange(0),
              help="seconds the kernel caches names (0 makes ls -l of large directories ~100x slower)")
@click.option("--attr-timeout", default=1.0, show_default=True, type=click.FloatRange(0),
              help="seconds the kernel caches attributes")
@click.option("--negative-timeout", default=1.0, show_default=True, type=click.FloatRange(0),
              help="seconds the kernel caches 'no such name'")
@click.option("--writeback-cache", is_flag=True, help="let the kernel buffer and merge writes (page cache)")
@click.option("--direct-io", is_flag=True, help="bypass the page cache (reads arrive as 1 MiB requests)")
@click.option("--read-ahead-kb", default=4096, show_default=True, type=click.IntRange(0),
              help="raise the mount's read_ahead_kb (buffered read size); 0 leaves it")
@click.option("--lazy", is_flag=True,
              help="lazy mode: changes apply here at once and reach the service within --lazy-delay; "
                   "fsync of any file or directory (`sync MOUNTPOINT`) and the unmount are barriers")
@click.option("--lazy-delay", default=1.0, show_default=True, type=click.FloatRange(0.001),
              help="lazy mode: seconds a change may wait before it is sent (back-pressure beyond)")
@click.option("--lazy-ttl", default=10.0, show_default=True, type=click.FloatRange(0),
              help="lazy mode: seconds this client keeps its own view of what it changed")
@click.option("--write-budget-mib", default=256, show_default=True, type=click.IntRange(1),
              help="MiB of written data the closes that do not wait (lazy mode) may hold")
@click.option("-o", "options", multiple=True, help="extra FUSE mount options (comma-separated)")
@click.option("--timeout", default=30.0, show_default=True, help="seconds to wait for the mount to be live")
@click.option("--snapshot", default=None, metavar="PATH@NAME",
              help="mount snapshot NAME of directory PATH, read-only, served from its manifest")
@click.option("--cache-dir", default=None, type=click.Path(file_okay=False),
              help="where this machine caches snapshot manifests and data [default: ~/.cache/dfs]")
@click.option("--cache-size", default=None, metavar="SIZE",
              help="keep up to SIZE (e.g. 50G) of the data read (snapshots, and files by data version) "
                   "in the node-local cache "
                   "under --cache-dir, shared with this machine's other dfs clients [default: off]")
@click.option("--snapdir", default=".snap", show_default=True,
              help="the name of the virtual directory of each directory's snapshots")
def mount(mountpoint: str, mgmt: tuple[str, ...], cluster_path: str, token_file: str | None, foreground: bool,
          log_file: str | None,
          log_level: str, entry_timeout: float, attr_timeout: float, negative_timeout: float,
          writeback_cache: bool, direct_io: bool, read_ahead_kb: int, lazy: bool, lazy_delay: float,
          lazy_ttl: float, write_budget_mib: int, options: tuple[str, ...], timeout: float, snapshot: str | None,
          cache_dir: str | None, cache_size: str | None, snapdir: str) -> None:
    """Mount the cluster at MOUNTPOINT (in the background unless --foreground).

    Every directory's snapshots are in its virtual directory .snap (--snapdir), read-only.
    With --snapshot PATH@NAME the mount is that one snapshot, read-only: names, attributes
    and listings come from its manifest (loaded once, cached on this machine), with no
    metadata request, and the kernel caches them and the pages without expiry. With --lazy
    the mount is in lazy mode (docs/design/client.md, "Lazy mode")."""
    from dfs.fuse.mount import is_mounted

    mp = _canon(mountpoint)
    if not os.path.isdir(mp):
        raise click.ClickException(f"{mountpoint}: not a directory")
    if is_mounted(mp):
        raise click.ClickException(f"{mountpoint} is already mounted (dfs umount {mountpoint})")
    if snapshot is not None:
        from dfs.client.snapshots import parse_spec

        try:
            parse_spec(snapshot)
        except OSError as e:
            raise click.ClickException(str(e)) from None
    if cache_size is not None:
        from dfs.client.nodecache import parse_size

        try:
            parse_size(cache_size)
        except OSError as e:
            raise click.ClickException(f"--cache-size: {e}") from None
    addrs = _resolve_mgmt(mgmt, cluster_path)
    creds = _credentials(mgmt, cluster_path, token_file)
    extra = tuple(o for opt in options for o in opt.split(",") if o)
    os.makedirs(STATE_DIR, exist_ok=True)
    if foreground:  # logs to stderr unless --log-file
        _serve(mp, addrs, os.path.abspath(log_file) if log_file else None, log_level, entry_timeout=entry_timeout,
               attr_timeout=attr_timeout, negative_timeout=negative_timeout, writeback_cache=writeback_cache,
               direct_io=direct_io, read_ahead_kb=read_ahead_kb, options=extra, auth=creds, lazy=lazy,
               lazy_delay=lazy_delay, lazy_ttl=lazy_ttl, write_budget=write_budget_mib << 20, snapshot=snapshot,
               cache_dir=os.path.abspath(cache_dir) if cache_dir else None, snapdir=snapdir, cache_size=cache_size)
        return
    log_file = os.path.abspath(log_file or _default_log(mp))
    where = ["--mgmt", ",".join(addrs)] if mgmt else ["--cluster", _cluster_file(cluster_path)]
    if token_file:
        where += ["--token-file", os.path.abspath(token_file)]
    argv = [sys.executable, "-m", "dfs.cli", "mount", mp, "--foreground", *where,
            "--log-file", log_file, "--log-level", log_level, "--entry-timeout", str(entry_timeout),
            "--attr-timeout", str(attr_timeout), "--negative-timeout", str(negative_timeout),
            "--read-ahead-kb", str(read_ahead_kb)]
    if writeback_cache:
        argv.append("--writeback-cache")
    if direct_io:
        argv.append("--direct-io")
    if lazy:
        argv.append("--lazy")
    argv += ["--lazy-delay", str(lazy_delay), "--lazy-ttl", str(lazy_ttl), "--write-budget-mib",
             str(write_budget_mib)]
    if extra:
        argv += ["-o", ",".join(extra)]
    if snapshot is not None:
        argv += ["--snapshot", snapshot]
    if cache_dir:
        argv += ["--cache-dir", os.path.abspath(cache_dir)]
    if snapdir != ".snap":
        argv += ["--snapdir", snapdir]
    if cache_size is not None:
        argv += ["--cache-size", cache_size]
    with open(log_file, "ab") as lf:
        start = lf.tell()
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=lf, stderr=lf, start_new_session=True,
                             close_fds=True, cwd="/")
    deadline = time.monotonic() + timeout
    while not is_mounted(mp):
        if p.poll() is not None:
            raise click.ClickException(f"mount of {mountpoint} failed (exit {p.returncode}); log {log_file}:\n"
                                       + _tail_from(log_file, start))
        if time.monotonic() > deadline:
            p.terminate()
            raise click.ClickException(f"{mountpoint} not mounted after {timeout:.0f}s; log {log_file}:\n"
                                       + _tail_from(log_file, start))
        time.sleep(0.02)
    click.echo(f"mounted {mp} (pid {p.pid}, log {log_file})")


def _tail_from(path: str, start: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(start)
            return f.read()[-4000:].decode(errors="replace")
    except OSError:
        return ""


def _serve(mp: str, addrs: list[str], log_file: str | None, log_level: str, **kw) -> None:
    import asyncio

    from dfs.fuse.mount import run_mount

    from dfs.common import logs

    logs.setup(f"mount[{os.getpid()}]", getattr(logging, log_level.upper()),
               stream=open(log_file, "a", buffering=1) if log_file else None)
    state = _state_path(mp)
    info = {"mountpoint": mp, "pid": os.getpid(), "log": log_file, "mgmt": addrs, "lazy": bool(kw.get("lazy"))}
    if kw.get("snapshot"):
        info.update(snapshot=kw["snapshot"], snapshot_state="ready")

    live = False

    def write() -> None:
        nonlocal live
        live = True
        with open(state + ".tmp", "w") as f:
            json.dump(info, f)
        os.replace(state + ".tmp", state)

    def changed(what: dict) -> None:  # the snapshot was deleted under the mount; the cache's counters
        info.update(what)
        if live:  # the state file says a mount is there only once it is
            write()

    try:
        asyncio.run(run_mount(mp, addrs, on_mounted=write, on_state=changed, **kw))
    except KeyboardInterrupt:
        pass
    finally:
        st = _read_state(mp)
        if st and st.get("pid") == os.getpid():
            try:
                os.unlink(state)
            except OSError:
                pass


@click.command()
@click.argument("mountpoint", type=click.Path())
@click.option("--timeout", type=float, default=None,
              help="seconds to wait for the mount process to end [default: 15; a lazy mount's, which writes "
                   "back what it holds first (its barrier): 600]")
def umount(mountpoint: str, timeout: float | None) -> None:
    """Unmount MOUNTPOINT (also one whose mount process crashed)."""
    from dfs.fuse.mount import is_mounted

    mp = _canon(mountpoint)
    st = _read_state(mp)
    was = is_mounted(mp)
    if was:
        errs = []
        for cmd in (["fusermount3", "-u", mp], ["fusermount3", "-uz", mp], ["umount", "-l", mp]):
            if shutil.which(cmd[0]) is None:
                continue
            r = subprocess.run(cmd, check=False, capture_output=True, text=True)
            if r.returncode == 0 and not is_mounted(mp):
                break
            errs.append(f"{' '.join(cmd)}: {r.stderr.strip()}")
        else:
            raise click.ClickException(f"cannot unmount {mountpoint}:\n" + "\n".join(errs))
    pid = st.get("pid") if st else None
    if timeout is None:
        timeout = 600.0 if st and st.get("lazy") else 15.0
    if pid and _alive(pid) and "dfs" in _cmdline(pid):
        deadline = time.monotonic() + timeout
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        if _alive(pid):
            os.kill(pid, signal.SIGTERM)
    elif not was:
        raise click.ClickException(f"{mountpoint} is not mounted")
    if st:
        try:
            os.unlink(_state_path(mp))
        except OSError:
            pass
    click.echo(f"unmounted {mp}")

