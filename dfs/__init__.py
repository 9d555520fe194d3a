"""dfs: a distributed file system."""

__version__ = "0.1.0"
