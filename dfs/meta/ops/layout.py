"""SETLAYOUT: a directory's default layout and small-files policy.

New files take their directory's layout at create (made explicit, so it never
changes after), new subdirectories inherit it; existing files keep theirs.
``inline`` sets the directory's policy (FLAG_INLINE), inherited the same
way. Owner or root; directories only. The leader first refuses a layout whose
replica count the cluster's one chain table cannot give (``admit``).

May import dfs.common, dfs.meta.schema and dfs.meta.ops.base only.
"""

from __future__ import annotations

from dfs.common import errors as err
from dfs.common import messages as m
from dfs.common.layout import Layout
from dfs.meta import schema as S
from dfs.meta.ops.base import apply


def admit(svc, req: m.Setlayout) -> None:
    """The leader's check before logging: the cluster's chains have one replica count."""
    if svc.chain_replicas is None or req.layout == 0:
        return
    want = Layout.unpack(req.layout).replicas
    if want != svc.chain_replicas:
        raise err.InvalidArgument(f"this cluster's chains have {svc.chain_replicas} replicas, "
                                  f"not {want} (one chain table)")


@apply(m.Setlayout, admit=admit)
def setlayout(ctx, req: m.Setlayout):
    i = ctx.inode(req.ino)
    ctx.check_lock(S.lock_key_inode(req.ino), S.LockMode.SHARED)
    if not i.is_dir():
        raise err.NotADirectory("a layout is set on directories")
    if ctx.caller.uid not in (0, i.uid):
        raise err.NotPermitted("setlayout: owner or root only")
    Layout.unpack(req.layout)  # EINVAL if malformed
    i.layout = req.layout
    if req.inline is not None:
        i.flags = (i.flags | S.FLAG_INLINE) if req.inline else (i.flags & ~S.FLAG_INLINE)
    i.ctime = ctx.ts
    ctx.put(i)
    return i
