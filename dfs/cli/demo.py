"""`dfs demo`: start a local cluster, show the namespace at work, stop it.

Every step prints what it did and what came back, so a first-time user sees
sharding, cross-shard operations, errno answers and a leader failover.
"""

from __future__ import annotations

import os
import stat
import tempfile
import time

import click


def _data_demo(c, fs, parent: int, mib: int) -> None:
    """Write and read a file through the data servers; lose one and read again."""
    from dfs.client.file import FileHandle
    from dfs.common.layout import Layout, chain_of
    from dfs.client.connect import cap_source
    from dfs.route.data import DataClient

    size = mib << 20
    lay = Layout(chunk_size=4 << 20, stripe=3, replicas=3)
    fs.setlayout(parent, lay.pack())
    _step(f"a {mib} MiB file through the file I/O core: 4 MiB chunks striped over 3 chains of 3 replicas")

    async def go():
        aio = fs.aio
        data = DataClient(aio.t.map, aio.t.refresh_map)
        data.set_cap_source(cap_source(aio, data))  # the data servers check capabilities
        try:
            attr, _ = await aio.create(parent, "model.safetensors")
            fh = FileHandle(aio, data, attr)
            block = bytes(range(256)) * 4096  # 1 MiB
            t = time.monotonic()
            for off in range(0, size, len(block)):
                await fh.pwrite(off, block)
            await fh.close()
            wt = time.monotonic() - t
            attr = await aio.getattr(attr.ino)
            chains = sorted({chain_of(attr.ino, k, lay, len(data.map.chains)) for k in range(3)})
            click.echo(f"  wrote {attr.size >> 20} MiB in {wt:.2f}s ({size / wt / 1e6:,.0f} MB/s), "
                       f"chunks on chains {chains}, replicas {[list(data.map.chains[i].targets) for i in chains]}")

            async def read_all() -> float:
                fh = FileHandle(aio, data, await aio.getattr(attr.ino))
                t = time.monotonic()
                off = 0
                while off < size:
                    got = await fh.pread(off, 4 << 20)
                    assert got == (block * 4)[:len(got)], "content differs"
                    off += len(got)
                await fh.close()
                return time.monotonic() - t

            rt = await read_all()
            click.echo(f"  read back and checked in {rt:.2f}s ({size / rt / 1e6:,.0f} MB/s)")
            victim = c.data_procs()[0]
            click.echo(f"  kill -9 of data server {victim.name} (pid {victim.pid})")
            c.kill(victim)
            rt = await read_all()
            click.echo(f"  read again with it down: every byte correct, {rt:.2f}s")
            c.spawn(victim)
            click.echo(f"  {victim.name} restarted; it resyncs from its chains before serving reads")
        finally:
            await data.close()

    fs.run(go())


def _client(c):
    """A synchronous namespace client of cluster ``c`` (inode-level: the demo shows ids and shards)."""
    from dfs.client.meta import MetaClient, SyncMetaClient
    from dfs.route.shards import GrpcTransport

    async def connect() -> MetaClient:
        return MetaClient(await GrpcTransport(c.mgmt_addresses, auth=c.credentials).connect())

    return SyncMetaClient(connect)


def _step(title: str) -> None:
    click.secho(f"\n== {title}", bold=True)


@click.command()
@click.option("--data", type=click.Path(file_okay=False), help="folder for the cluster (default: a temporary one)")
@click.option("--shards", default=2, show_default=True, type=click.IntRange(1, 16))
@click.option("--files", default=2000, show_default=True, type=click.IntRange(1, 1_000_000),
              help="small files to create in the dataset directory")
@click.option("--data-mib", default=64, show_default=True, type=click.IntRange(1, 4096),
              help="size of the file written and read through the data servers")
@click.option("--keep", is_flag=True, help="leave the cluster running afterwards")
def demo(data: str | None, shards: int, files: int, data_mib: int, keep: bool) -> None:
    """Start a local cluster and run a short demonstration (namespace, failover, data)."""
    from dfs.common import errors
    from dfs.common.ids import ROOT_INO, shard_of
    from dfs.common.ops import RENAME_EXCHANGE
    from dfs.local.cluster import LocalCluster

    root = data or tempfile.mkdtemp(prefix="dfs-demo-")
    _step(f"starting mgmt (3 replicas), {shards} metadata shards x 3 replicas and 3 data servers in {root}")
    t0 = time.monotonic()
    c = LocalCluster(root, shards=shards, replicas=3, mgmt_replicas=3, data_servers=3)
    c.start()
    click.echo(f"healthy after {time.monotonic() - t0:.1f}s; processes:")
    for p in c.procs:
        role = {"mgmt": "mgmt", "data": "data"}.get(p.role, f"shard {p.shard}")
        click.echo(f"  {p.name:<10} pid {p.pid:<8} {role:<8} {p.address}")
    try:
        with _client(c) as fs:
            _step("directories spread over shards (the home shard is encoded in the inode id)")
            ds = fs.mkdir(ROOT_INO, "datasets")
            click.echo(f"  mkdir /datasets            -> inode {ds.ino:#x} on shard {shard_of(ds.ino)}")
            parts = []
            for i in range(4):
                d = fs.mkdir(ds.ino, f"part-{i}")
                parts.append(d)
                click.echo(f"  mkdir /datasets/part-{i}     -> inode {d.ino:#x} on shard {shard_of(d.ino)}")

            _step(f"{files} small-file entries created through batch RPCs (group-committed into Raft entries)")
            t = time.monotonic()
            names = [f"sample-{i:07d}.jpg" for i in range(files)]
            for i in range(0, files, 500):
                res = fs.create_many(parts[0].ino, names[i:i + 500])
                bad = [r for r in res if isinstance(r, OSError)]
                if bad:
                    raise bad[0]
            dt = time.monotonic() - t
            click.echo(f"  created {files} files in {dt:.2f}s ({files / dt:,.0f} creates/s)")
            t = time.monotonic()
            entries = fs.listdir(parts[0].ino, plus=True)
            dt = time.monotonic() - t
            click.echo(f"  readdir+attributes of {len(entries)} entries in {dt * 1000:.0f} ms, "
                       f"first: {entries[0].name.decode()} mode {stat.filemode(entries[0].attr.mode)}")

            _step("cross-shard operations: two-phase commit, atomic")
            src, dst = next(((a, b) for a in parts for b in parts if shard_of(a.ino) != shard_of(b.ino)),
                            (parts[0], parts[1]))
            f, _ = fs.create(src.ino, "labels.csv")
            fs.rename(src.ino, "labels.csv", dst.ino, "labels-v2.csv")
            click.echo(f"  rename shard {shard_of(src.ino)} -> shard {shard_of(dst.ino)}: "
                       f"labels.csv is now {fs.lookup(dst.ino, 'labels-v2.csv').ino:#x} in {dst.ino:#x}")
            a = fs.link(f.ino, src.ino, "labels-link.csv")
            click.echo(f"  hard link across shards: nlink={a.nlink}")
            fs.rename(src.ino, "labels-link.csv", dst.ino, "labels-v2.csv", RENAME_EXCHANGE)
            click.echo("  RENAME_EXCHANGE of two names of the same inode: done, nothing changed")
            sub = fs.mkdir(src.ino, "nested")
            try:
                fs.rename(ds.ino, f"part-{parts.index(src)}", sub.ino, "loop")
            except errors.InvalidArgument as e:
                click.echo(f"  moving a directory into its own subtree -> {e}")
            fs.setxattr(f.ino, "user.source", b"crawl-2026-11")
            click.echo(f"  xattr user.source = {fs.getxattr(f.ino, 'user.source').decode()}")

            _step("errors are errno values end to end, and change nothing")
            for what, call in [("rmdir of a non-empty directory", lambda: fs.rmdir(ds.ino, "part-0")),
                               ("a 256-byte name", lambda: fs.create(ds.ino, "x" * 256)),
                               ("a name with '/'", lambda: fs.create(ds.ino, "a/b")),
                               ("create over an existing name", lambda: fs.create(parts[0].ino, names[0]))]:
                try:
                    call()
                except OSError as e:
                    click.echo(f"  {what:<32} -> {type(e).__name__} errno {e.errno} ({os.strerror(e.errno)})")

            _step("kill -9 the leader of shard 0 while writing")
            victim = c.leader_of(0)
            click.echo(f"  leader of shard 0 is {victim.name} (pid {victim.pid}); killing it")
            t = time.monotonic()
            c.kill(victim)
            fs.create(ds.ino, "written-after-failover")
            click.echo(f"  next write committed by the new leader after {time.monotonic() - t:.2f}s")
            c.restart(victim)
            click.echo(f"  {victim.name} restarted (pid {victim.pid}); it catches up from the log")
            click.echo(f"  /datasets now holds {[e.name.decode() for e in fs.listdir(ds.ino)]}")
            st = fs.statfs()
            click.echo(f"  statfs: {st.files - st.files_free} inodes in use")

            _data_demo(c, fs, ds.ino, data_mib)
    finally:
        if keep:
            click.echo(f"\ncluster left running; cluster file {c.config_path}")
        else:
            _step("stopping the cluster")
            c.stop()
            click.echo("  all processes stopped")
