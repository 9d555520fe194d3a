"""The cluster file's Raft password and salt rules (docs/design/security.md, "Raft").

Each fails on the code before the rules: an empty, short or placeholder
password loaded (only the bootstrap checked the length), and two clusters with
the same password derived the same Raft key and internal token.
"""

from __future__ import annotations

import pytest
import tomli_w

from dfs.common.config import ClusterConfig, ReplicaAddr, ShardConfig, check_raft_password, example_secrets
from dfs.testing.keys import raft_password, raft_salt

R = ReplicaAddr(0, "127.0.0.1:1", "127.0.0.1:2")


def make(pw: str, **kw) -> ClusterConfig:
    return ClusterConfig("c", pw, (R,), (ShardConfig(0, (R,)),), **kw)


@pytest.mark.parametrize("pw", ["", "pw", "x" * 15, "change-me", "change-me-change-me-change-me", "password1234567890",
                                "MySecretSecret123456", "replace-me-with-64-hex-digits-from-secrets-token-hex",
                                "0" * 32, "abababababababababab"])
def test_weak_passwords_are_refused_everywhere_a_config_is_made(tmp_path, pw):
    with pytest.raises(ValueError, match="raft_password"):
        make(pw)
    good = make(raft_password(), raft_salt=raft_salt()).to_dict()
    with pytest.raises(ValueError, match="raft_password"):
        ClusterConfig.from_dict({**good, "raft_password": pw})
    (tmp_path / "c.toml").write_text(tomli_w.dumps({**good, "raft_password": pw}))
    with pytest.raises(ValueError, match="raft_password"):
        ClusterConfig.load(str(tmp_path / "c.toml"))


def test_strong_passwords_load():
    for pw in (raft_password(), "correct horse battery staple 42!", "ß" * 4 + "kX9#qL2@vB7t"):
        assert check_raft_password(pw) == pw and make(pw).raft_password == pw


def test_the_example_context_takes_placeholders_but_never_short_ones():
    with example_secrets():
        assert make("replace-me-with-64-hex-digits", raft_salt="replace-me-with-32-hex-digits").raft_salt
        with pytest.raises(ValueError, match="at least 16"):
            make("change-me")
    with pytest.raises(ValueError, match="placeholder"):
        make("replace-me-with-64-hex-digits")


@pytest.mark.parametrize("salt", ["", "short", "has space in it 1234", "replace-me-with-32-hex-digits", 12345678901234567])
def test_bad_salts_are_refused(salt):
    with pytest.raises(ValueError, match="raft_salt"):
        make(raft_password(), raft_salt=salt)


def test_the_salt_separates_clusters_that_share_a_password():
    pw = raft_password()
    a, b = make(pw, raft_salt=raft_salt()), make(pw, raft_salt=raft_salt())
    assert a.raft_key != b.raft_key and a.internal_token != b.internal_token
    assert pw not in (a.raft_key, b.raft_key) and a.raft_key != a.internal_token
    again = make(pw, raft_salt=a.raft_salt)
    assert (again.raft_key, again.internal_token) == (a.raft_key, a.internal_token)  # deterministic


def test_a_file_without_a_salt_keeps_its_keys():
    """Files from before salts: the same Raft key (the password) and internal token as then,
    so that a rolling upgrade does not split the cluster."""
    import hashlib
    import hmac

    pw = raft_password()
    old = make(pw)
    assert old.raft_salt is None and old.raft_key == pw
    assert old.internal_token == hmac.new(pw.encode(), b"dfs-internal-ops", hashlib.sha256).hexdigest()
    assert "raft_salt" not in old.to_dict() and ClusterConfig.from_dict(old.to_dict()) == old
