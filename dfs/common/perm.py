"""POSIX mode-bit permission checks, one implementation for the service and the client."""

from __future__ import annotations

import stat

from dfs.common import errors as err
from dfs.common.records import Caller

R_OK, W_OK, X_OK = 4, 2, 1


def check_mode(mode: int, uid: int, gid: int, caller: Caller, mask: int) -> None:
    """PermissionDenied unless ``caller`` may do ``mask`` (R_OK|W_OK|X_OK) on an
    object of ``mode``/``uid``/``gid``. Root passes, except that executing a
    non-directory needs some x bit (as on Linux)."""
    if not mask:
        return
    if caller.uid == 0:
        if mask & X_OK and not stat.S_ISDIR(mode) and not mode & 0o111:
            raise err.PermissionDenied()
        return
    if caller.uid == uid:
        bits = (mode >> 6) & 7
    elif caller.in_group(gid):
        bits = (mode >> 3) & 7
    else:
        bits = mode & 7
    if mask & ~bits:
        raise err.PermissionDenied()
