"""Raft-replicated state machine hosting (pysyncobj lives only in here).

``api``: the StateMachine/Log contract the state machines see; ``raft``:
``RaftHost`` (pysyncobj inside, group commit, the submit path, leadership
transfer); ``snapshot``: snapshots as the state machine's own checkpoints,
packed for pysyncobj; ``membership``: members.json and single-server changes,
one at a time; ``testing``: a counter state machine for the host's own tests.
"""
