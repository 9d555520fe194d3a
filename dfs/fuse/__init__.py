"""The FUSE adapter: a dfs cluster as a local POSIX mount (pyfuse3, asyncio mode).

``ops.DfsOperations`` maps the kernel's requests onto ``MetaClient`` and
``FileHandle``; ``mount.run_mount`` connects, mounts and serves. The design
notes are in docs/design/client.md, "FUSE mount".
"""
