"""Compiled extension modules of dfs (built from native/ by setup.py).

``dfs._native.crc32c`` -- CRC32C, built from native/crc32c.pyx.  Import it via
``dfs.common.checksum`` which falls back to pure Python when it is missing.
"""
