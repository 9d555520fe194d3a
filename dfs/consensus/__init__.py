"""Raft-replicated state machine hosting (pysyncobj lives only in here)."""
