"""``ShardGroup``: one shard's Raft group as the membership commands see it -- the
replicas it may ask (cluster file and map), its leader, the leader's view of the
membership -- and the operations on it: one membership change, a leadership
moved off a replica, the wait for a new replica to catch up.
"""

from __future__ import annotations

import asyncio
import time

import click

from dfs.cli.admin.common import DEADLINE, internal, progress_bar


async def _membership_views(creds, md, addrs: list[str], timeout: float = 2.0) -> dict:
    """gRPC address -> its Membership reply (op ""), or None if it does not answer."""
    import grpc

    from dfs._proto import meta_pb2 as pb
    from dfs._proto import meta_pb2_grpc as pbg

    async def one(addr: str):
        async with creds.channel(addr) as ch:
            try:
                return await pbg.MetaServiceStub(ch).Membership(pb.MembershipRequest(), metadata=md, timeout=timeout)
            except grpc.aio.AioRpcError:
                return None

    res = await asyncio.gather(*(one(a) for a in addrs))
    return dict(zip(addrs, res))


def as_membership(rep):
    """A Membership reply (protobuf) as the consensus package's ``Membership``."""
    from dfs.consensus.membership import Membership, PeerProgress

    return Membership(rep.self_raft, tuple(rep.members), None, True, rep.pending, rep.last_index, rep.commit_index,
                      tuple(PeerProgress(p.raft, p.connected, p.live, p.match_index) for p in rep.peers))


class ShardGroup:
    """One shard's Raft group as the admin commands see it: the replicas it may ask (cluster
    file and map), its leader, the leader's view of the membership."""

    def __init__(self, cfg, creds, shard: int, m) -> None:
        self.cfg, self.creds, self.shard = cfg, creds, shard
        self.md = internal(cfg)
        addrs = [r.address for r in cfg.shards[shard].replicas] if shard < len(cfg.shards) else []
        if m is not None and shard < len(m.shards):
            addrs += [r["address"] for r in m.shards[shard]]
        self.addrs = list(dict.fromkeys(addrs))

    def learn(self, address: str) -> None:
        """Ask ``address`` too (a replica being added)."""
        if address not in self.addrs:
            self.addrs.append(address)

    async def leader_view(self, deadline: float = 10.0):
        """(the leader's gRPC address, its Membership reply), waiting up to ``deadline`` for one."""
        end = time.monotonic() + deadline
        while True:
            views = await _membership_views(self.creds, self.md, self.addrs)
            for addr, rep in views.items():
                if rep is not None and rep.status == 1:
                    raise click.ClickException(f"refused: {rep.message}")
                if rep is not None and rep.status == 0 and rep.leader == addr:
                    return addr, rep
            if time.monotonic() > end:
                answering = [a for a, r in views.items() if r is not None]
                raise click.ClickException(f"shard {self.shard}: no leader answers (replicas answering: "
                                           f"{answering or 'none'})")
            await asyncio.sleep(0.1)

    async def change(self, op: str, raft: str, deadline: float = DEADLINE, started: bool = False):
        """One membership change on the leader (following leader changes); its final view."""
        import grpc

        from dfs._proto import meta_pb2 as pb
        from dfs._proto import meta_pb2_grpc as pbg
        from dfs.common import errors as err

        end = time.monotonic() + deadline
        last = ""
        unsure = False  # an attempt timed out: our own change may be the one still pending
        while time.monotonic() < end:
            lead, _ = await self.leader_view(max(1.0, end - time.monotonic()))
            req = pb.MembershipRequest(op=op, raft=raft, timeout=max(1.0, min(10.0, end - time.monotonic())),
                                       started=started)
            async with self.creds.channel(lead) as ch:
                try:
                    rep = await pbg.MetaServiceStub(ch).Membership(req, metadata=self.md, timeout=req.timeout + 5.0)
                except grpc.aio.AioRpcError as e:
                    last, unsure = e.code().name, True
                    await asyncio.sleep(0.1)
                    continue
            if rep.status == 0:
                return rep
            last = rep.message or str(rep.status)
            if rep.status in (err.NOT_LEADER, err.UNAVAILABLE, 11) or (unsure and rep.status == 16):
                # a leader change, no commit yet, or EAGAIN (a new leader's first entry is not
                # applied yet): ask the (new) leader again; a repeat of a done change is a no-op
                unsure = unsure or rep.status in (err.NOT_LEADER, err.UNAVAILABLE)
                await asyncio.sleep(0.1)
                continue
            raise click.ClickException(f"shard {self.shard}: {op} {raft} refused: {last}")
        raise click.ClickException(f"shard {self.shard}: {op} {raft} did not complete within {deadline:.0f}s "
                                   f"({last}); run the command again")

    async def started(self, rep) -> bool:
        """Whether replica ``rep`` answers, as a replica of this shard (a replica of another
        shard at that address is refused)."""
        from dfs.local import probe

        st = await probe.replica_status(self.creds, rep.address)
        if st is None:
            return False
        if st.shard != self.shard:
            raise click.ClickException(f"{rep.address} is a replica of shard {st.shard}, not of shard {self.shard}")
        return True

    async def move_leader_off(self, raft: str, view, deadline: float = DEADLINE, echo=lambda s: None) -> None:
        """If ``raft`` leads the group, hand the leadership to the most caught-up live replica."""
        import grpc

        from dfs._proto import meta_pb2 as pb
        from dfs._proto import meta_pb2_grpc as pbg

        end = time.monotonic() + deadline
        while True:
            lead, view = await self.leader_view(max(1.0, end - time.monotonic()))
            if view.self_raft != raft:
                return
            live = sorted((p for p in view.peers if p.live), key=lambda p: -p.match_index)
            if not live:
                raise click.ClickException(f"shard {self.shard}: {raft} leads and no other replica answers")
            if time.monotonic() > end:
                raise click.ClickException(f"shard {self.shard}: the leadership did not move off {raft}")
            echo(f"replica {raft} leads shard {self.shard}: moving the leadership to {live[0].raft}")
            req = pb.TransferLeaderRequest(to=live[0].raft, timeout=max(1.0, min(10.0, end - time.monotonic())))
            async with self.creds.channel(lead) as ch:
                try:
                    await pbg.MetaServiceStub(ch).TransferLeader(req, metadata=self.md, timeout=req.timeout + 5.0)
                except grpc.aio.AioRpcError:
                    pass
            await asyncio.sleep(0.1)

    async def wait_caught_up(self, rep, timeout: float, progress: bool, path: str) -> None:
        """Until the leader knows replica ``rep`` (a ReplicaAddr) holds every entry the leader had
        committed when the wait began (Raft's match index; a progress bar of entries)."""
        _, view = await self.leader_view()
        target = view.commit_index
        end = time.monotonic() + timeout
        bar = progress_bar(target, f"replica {rep.id} catches up", "entry", progress)
        try:
            while True:
                _, view = await self.leader_view(max(1.0, end - time.monotonic()))
                if rep.raft not in view.members:
                    raise click.ClickException(f"replica {rep.id} ({rep.raft}) is no longer in shard {self.shard}'s "
                                               f"group")
                peer = next((p for p in view.peers if p.raft == rep.raft), None)
                match = view.last_index if peer is None else peer.match_index  # None: it leads
                bar.update(max(0, min(match, target) - bar.n))
                if match >= target:
                    return
                if time.monotonic() > end:
                    how = "does not answer" if peer is not None and not peer.live else \
                        f"holds {match} of {target} entries"
                    raise click.ClickException(
                        f"replica {rep.id} ({rep.address}) is in shard {self.shard}'s group but {how} after "
                        f"{timeout:.0f}s. Is it running? (dfs meta-server --config {path} --shard {self.shard} "
                        f"--replica {rep.id} --data DIR). The change stays in flight: run this command again.")
                await asyncio.sleep(0.2)
        finally:
            bar.close()


def check(view, op: str, raft: str, started: bool = False) -> None:
    """The leader's own rule (``check_change``) on its view, before asking it: a refusal is
    the command's error."""
    from dfs.common import errors as err
    from dfs.consensus.membership import check_change

    try:
        check_change(as_membership(view), op, raft, started)
    except err.DfsError as e:
        raise click.ClickException(f"refused: {e.detail}") from None
