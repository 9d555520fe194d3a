"""Secrets for the clusters tests make: a fresh strong Raft password (and salt) each time.

    ClusterConfig("c", raft_password(), replicas, shards, raft_salt=raft_salt())

The cluster file refuses empty, short and placeholder passwords
(``dfs.common.config.check_raft_password``); tests get theirs here rather
than writing one down, so no two test clusters share a key and no test
weakens the rule.

Test support: imports the standard library only.
"""

from __future__ import annotations

import secrets


def raft_password() -> str:
    """A Raft password as ``dfs cluster up`` makes one (64 hex digits)."""
    return secrets.token_hex(32)


def raft_salt() -> str:
    """A per-cluster salt as ``dfs cluster up`` makes one (32 hex digits)."""
    return secrets.token_hex(16)
