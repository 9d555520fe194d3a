"""Capabilities for tests and benchmarks that drive the data plane without a metadata
service: signed here with the cluster's key (``ClusterConfig.internal_token``), which
only servers and their operators hold. Never used by a client."""

from __future__ import annotations

from dfs.common import caps


def trust(data, cfg) -> None:
    """Let DataClient ``data`` sign the capabilities its requests need itself (every inode it
    asks for: a test of chains, not of permissions)."""
    signer = caps.Signer(caps.cap_key(cfg.internal_token), cfg.security.capability_ttl)

    async def source(ino: int, rights: int, snap: int) -> bytes:
        return signer.snapshot(snap) if snap else signer.inodes(ino, ino + 1, rights)

    data.set_cap_source(source)
