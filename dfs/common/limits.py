"""POSIX limits dfs enforces everywhere."""

NAME_MAX = 255
PATH_MAX = 4096
SYMLINK_MAX = 4095
XATTR_NAME_MAX = 255
XATTR_SIZE_MAX = 65536
LINK_MAX = 65000

# Regular files whose bytes all lie below this offset keep them in their
# metadata shard (Data-on-MDT; docs/design/data.md "Small files inline").
# Chosen by measurement (docs/benchmarks.md "Small files inline (issue 3)").
# 32 KiB: the largest size at which inline was faster end to end (writes 1.5x,
# reads even); above it the shard's Raft log becomes byte-bound.
INLINE_MAX = 32 * 1024
