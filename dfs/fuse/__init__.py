"""The FUSE adapter: a dfs cluster as a local POSIX mount (pyfuse3, asyncio mode).

``ops.DfsOperations`` translates the kernel's requests onto the client core
(``dfs.client.core.Core``, shared with the library); ``mount.run_mount``
connects, mounts and serves. The design
notes are in docs/design/client.md, "FUSE mount".
"""
