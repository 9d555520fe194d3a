"""The KV interface: bytes to bytes, ordered, with atomic write batches."""

from __future__ import annotations

import abc
from collections.abc import Iterator


def prefix_end(prefix: bytes) -> bytes:
    """The smallest key greater than every key that starts with ``prefix``."""
    p = bytearray(prefix)
    while p:
        if p[-1] != 0xFF:
            p[-1] += 1
            return bytes(p)
        p.pop()
    return b"\xff" * 64


class WriteBatch:
    """Puts and deletes applied together or not at all."""

    __slots__ = ("ops",)

    def __init__(self) -> None:
        self.ops: list[tuple[bytes, bytes | None]] = []

    def put(self, key: bytes, value: bytes) -> None:
        self.ops.append((key, value))

    def delete(self, key: bytes) -> None:
        self.ops.append((key, None))

    def __len__(self) -> int:
        return len(self.ops)


class KV(abc.ABC):
    """An ordered map of bytes. Reads may run concurrently with one writer."""

    @abc.abstractmethod
    def get(self, key: bytes) -> bytes | None:
        """The value at ``key``, or None."""

    @abc.abstractmethod
    def scan(self, start: bytes, end: bytes, limit: int | None = None) -> Iterator[tuple[bytes, bytes]]:
        """Pairs with ``start <= key < end`` in key order, at most ``limit``."""

    @abc.abstractmethod
    def write(self, batch: WriteBatch, sync: bool = False) -> None:
        """Apply every operation of ``batch`` atomically."""

    @abc.abstractmethod
    def checkpoint(self, path: str) -> None:
        """Write a consistent, openable copy of the whole store to directory ``path``."""

    def close(self) -> None:  # noqa: B027 - optional for engines without resources
        """Release the engine's resources."""

    def scan_prefix(self, prefix: bytes, limit: int | None = None) -> Iterator[tuple[bytes, bytes]]:
        return self.scan(prefix, prefix_end(prefix), limit)

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """Every pair, in key order (used to compare replicas)."""
        return self.scan(b"", b"\xff" * 64)
