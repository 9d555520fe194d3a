"""Scripted file I/O checked against a bytearray: the reference model behind the
file conformance tests (hypothesis draws the scripts).

A script is a list of (kind, offset, n) steps: "write" n bytes at offset,
"truncate" to offset, "read" n bytes at offset, "flush", and any other kind
closes the handle and opens the file again.
"""

from __future__ import annotations

from typing import Callable

from dfs.client.file import FileHandle
from dfs.common.layout import Layout


async def run_script(meta, data, attr, script, layout: Layout, blob: Callable[[int, int], bytes]):
    """Run ``script`` on a FileHandle of ``attr`` and on a bytearray; every read, the size after each
    reopen and the whole file at the end must match the bytearray. ``blob(n, seed)`` makes the
    bytes of the seed-th write. Returns the file's attributes at the end."""
    window = 2 * layout.chunk_size
    ref = bytearray()
    fh = FileHandle(meta, data, attr, layout=layout, window=window)
    seed = 0
    for kind, off, n in script:
        if kind == "write":
            seed += 1
            b = blob(n, seed)
            await fh.pwrite(off, b)
            if len(ref) < off:
                ref.extend(bytes(off - len(ref)))
            ref[off:off + n] = b
        elif kind == "truncate":
            await fh.truncate(off)
            if off < len(ref):
                del ref[off:]
            else:
                ref.extend(bytes(off - len(ref)))
        elif kind == "read":
            got = await fh.pread(off, n)
            assert got == bytes(ref[off:off + n]), f"read {off}+{n}"
        elif kind == "flush":
            await fh.flush()
        else:  # close and open again: the size comes back from the metadata service
            await fh.close()
            attr = await meta.getattr(attr.ino)
            assert attr.size == len(ref)
            fh = FileHandle(meta, data, attr, layout=layout, window=window)
    await fh.close()
    attr = await meta.getattr(attr.ino)
    assert attr.size == len(ref)
    fh = FileHandle(meta, data, attr, layout=layout)
    assert await fh.pread(0, len(ref) + 10) == bytes(ref)
    return attr
