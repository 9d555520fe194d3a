"""Raft-replicated state machine hosting (pysyncobj lives only in here).

``api``: the StateMachine/Log contract the state machines see; ``raft``:
``RaftHost`` (pysyncobj inside, group commit, the submit path, leadership
transfer, nothing acknowledged before it is on disk); ``journal``: pysyncobj's
journal on disk; ``files``: small files replaced atomically and durably;
``snapshot``: snapshots as the state machine's own checkpoints, packed for
pysyncobj; ``membership``: members.json and single-server changes, one at a
time; ``testing``: a counter state machine for the host's own tests.
"""
