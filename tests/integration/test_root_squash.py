"""Root squashing on real clusters (``[security] root_squash``, docs/design/security.md).

Two small clusters (1 mgmt, 1 shard replica, 1 data server), one with root
squashing and one without. In each, an operator (the internal token) makes a
world-writable directory, and alice (uid 1000) writes a 0600 file and a 0700
directory there. Under root squashing, root, through the library and through
a mount, cannot read her file, list her directory, chown or chmod what is
hers, and what root creates is nobody's; without it, root can do all that.
The identity is asserted by the client, so only the servers can squash it.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest

import dfs
from dfs.client.meta import MetaClient
from dfs.common.config import SecurityConfig
from dfs.common.ids import ROOT_INO
from dfs.common.records import Caller
from dfs.route.shards import GrpcTransport
from dfs.wire.auth import INTERNAL_HEADER

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SECRET = b"alice's secret"
OPTIONS = dict(shards=1, replicas=1, mgmt_replicas=1, data_servers=1, chain_replicas=1)


def _prepare(c) -> None:
    """The operator's /pub (0777, with the internal token: under root squashing no client is
    root), then alice's 0600 file and 0700 directory in it."""
    async def operator():
        t = GrpcTransport(c.mgmt_addresses, auth=c.credentials, metadata=((INTERNAL_HEADER, c.cfg.internal_token),))
        m = MetaClient(await t.connect())
        try:
            d = await m.mkdir(ROOT_INO, "pub", 0o777)
            await m.setattr(d.ino, mode=0o777)
        finally:
            await m.close()

    asyncio.run(operator())
    with dfs.connect(c.config_path, uid=1000, gid=1000, groups=()) as fs:
        fs.write_bytes("/pub/secret", SECRET)
        fs.chmod("/pub/secret", 0o600)
        fs.mkdir("/pub/private", 0o700)
        fs.write_bytes("/pub/private/f", b"x")


@pytest.fixture(scope="module")
def squashed(module_clusters):
    c = module_clusters.make(security=SecurityConfig(root_squash=True), **OPTIONS)
    _prepare(c)
    return c


@pytest.fixture(scope="module")
def plain(module_clusters):
    c = module_clusters.make(**OPTIONS)
    _prepare(c)
    return c


def _root(c):
    return dfs.connect(c.config_path, uid=0, gid=0, groups=())


def test_the_library_as_root_is_nobody_under_root_squash(squashed):
    with _root(squashed) as fs:
        assert fs.caller == Caller(0, 0, ())  # the client asserts root; the server squashes it
        with pytest.raises(PermissionError):
            fs.read_bytes("/pub/secret")
        with pytest.raises(PermissionError):
            fs.write_bytes("/pub/secret", b"overwritten")
        with pytest.raises(PermissionError):
            fs.listdir("/pub/private")
        for change in (lambda: fs.chown("/pub/secret", 0, 0), lambda: fs.chmod("/pub/secret", 0o644),
                       lambda: fs.chown("/pub/secret", 65534, 65534)):
            with pytest.raises(PermissionError):
                change()
        with pytest.raises(PermissionError):  # "/" is root's 0755: nobody may write there
            fs.write_bytes("/top", b"")
        fs.write_bytes("/pub/by-root", b"r")
        st = fs.stat("/pub/by-root")
        assert (st.st_uid, st.st_gid) == (65534, 65534)
    with dfs.connect(squashed.config_path, uid=1000, gid=1000, groups=()) as fs:
        assert fs.read_bytes("/pub/secret") == SECRET  # nothing changed
        st = fs.stat("/pub/secret")
        assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (1000, 1000, 0o600)


def test_the_data_plane_serves_root_nothing_it_could_not_open_under_root_squash(squashed):
    """The data servers cannot check modes: without capabilities a squashed root that knows
    (stat) the inode of alice's 0600 file read its chunks, and wrote them, straight from the
    data plane. Now a chunk request needs a capability the metadata service signs only for
    what the caller may open (docs/design/security.md, "Data-plane capabilities")."""
    from dfs.common.layout import Layout

    with _root(squashed) as fs:
        st = fs.stat("/pub/secret")
        data = fs.aio.data
        lay = Layout.unpack(fs.run(fs.aio.meta.getattr(st.st_ino)).layout)
        with pytest.raises(PermissionError):
            fs.run(data.read(st.st_ino, 0, 0, 100, lay))
        with pytest.raises(PermissionError):
            fs.run(data.write(st.st_ino, 0, 0, b"overwritten", lay))
        with pytest.raises(PermissionError):
            fs.run(data.truncate(st.st_ino, 0, 0, lay))
    with dfs.connect(squashed.config_path, uid=1000, gid=1000, groups=()) as fs:
        assert fs.read_bytes("/pub/secret") == SECRET  # nothing changed
        # and the bytes are on the data servers (not inline): alice, who may, reads them there
        assert bytes(fs.run(fs.aio.data.read(st.st_ino, 0, 0, 100, lay))) == SECRET
        # and the bytes are on the data servers (not inline): alice, who may, reads them there
        assert bytes(fs.run(fs.aio.data.read(st.st_ino, 0, 0, 100, lay))) == SECRET


def test_the_library_as_root_may_do_anything_without_root_squash(plain):
    with _root(plain) as fs:
        assert fs.read_bytes("/pub/secret") == SECRET
        assert fs.listdir("/pub/private") == ["f"]
        fs.write_bytes("/pub/by-root", b"r")
        st = fs.stat("/pub/by-root")
        assert (st.st_uid, st.st_gid) == (0, 0)
        fs.chown("/pub/private/f", 0, 0)
        fs.chmod("/pub/private/f", 0o600)
        st = fs.stat("/pub/private/f")
        assert (st.st_uid, st.st_mode & 0o777) == (0, 0o600)


def _dfs(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("DFS_TOKEN", "DFS_TOKEN_FILE")}
    return subprocess.run([sys.executable, "-m", "dfs.cli", *args], check=False, capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.fixture
def mounted(squashed, tmp_path):
    pytest.importorskip("pyfuse3")
    if not (os.path.exists("/dev/fuse") and os.access("/dev/fuse", os.R_OK | os.W_OK)):
        pytest.skip("no usable /dev/fuse")
    if os.geteuid() != 0:
        pytest.skip("the mount test acts as root")
    mp = tmp_path / "mnt"
    mp.mkdir()
    r = _dfs("mount", str(mp), "--cluster", squashed.config_path, "--log-file", str(tmp_path / "mount.log"))
    assert r.returncode == 0, r.stdout + r.stderr
    try:
        yield mp
    finally:
        u = _dfs("umount", str(mp))
        assert u.returncode == 0, u.stdout + u.stderr


def test_root_through_a_mount_is_nobody_under_root_squash(mounted):
    """The kernel lets root past its own checks (CAP_DAC_OVERRIDE, CAP_CHOWN); the metadata
    service, which sees uid 0 from the mount, refuses as it would refuse nobody."""
    with pytest.raises(PermissionError):
        (mounted / "pub" / "secret").read_bytes()
    with pytest.raises(PermissionError):
        os.listdir(mounted / "pub" / "private")
    with pytest.raises(PermissionError):
        os.chown(mounted / "pub" / "secret", 0, 0)
    with pytest.raises(PermissionError):
        os.chmod(mounted / "pub" / "secret", 0o644)
    (mounted / "pub" / "via-mount").write_bytes(b"m")
    st = os.stat(mounted / "pub" / "via-mount")
    assert (st.st_uid, st.st_gid) == (65534, 65534)
