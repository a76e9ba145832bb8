"""Byte-level mutations: bit flips, truncation, overwritten and duplicated ranges.

They make the inputs a parser meets when a file is cut short by a failed download, damaged on disk or
crafted: every reader (protobuf, flatbuffer, numpy, PIL, tarfile) must turn them into one clean error.
Each function takes the bytes and a ``random.Random`` and returns (new bytes, a short description).
"""
from __future__ import annotations

import random


def bit_flips(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """Flip 1..8 random bits."""
    buf = bytearray(data)
    if not buf:
        return bytes(buf), "bitflip on empty input (no-op)"
    where = []
    for _ in range(rng.randint(1, 8)):
        pos, bit = rng.randrange(len(buf)), rng.randrange(8)
        buf[pos] ^= 1 << bit
        where.append(f"{pos}.{bit}")
    return bytes(buf), f"bitflip {len(where)} bit(s) at {','.join(where)}"


def truncate(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """Cut the file at a random offset (biased towards the head, where the headers are)."""
    n = len(data)
    cut = rng.choice([0, 1, 4, 8, 16, 64, 512]) if rng.random() < 0.3 else rng.randrange(max(1, n))
    cut = min(cut, n)
    return data[:cut], f"truncate to {cut} of {n} bytes"


def overwrite(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """Overwrite a random range with zeros, 0xFF or random bytes."""
    if not data:
        return data, "overwrite on empty input (no-op)"
    buf = bytearray(data)
    start = rng.randrange(len(buf))
    length = min(len(buf) - start, rng.choice([1, 2, 4, 8, 64, 1024]))
    fill = rng.choice(["zeros", "ff", "random"])
    chunk = {"zeros": b"\0" * length, "ff": b"\xff" * length,
             "random": bytes(rng.randrange(256) for _ in range(length))}[fill]
    buf[start:start + length] = chunk
    return bytes(buf), f"overwrite [{start}:{start + length}] with {fill}"


def duplicate(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """Insert a copy of a random range at another offset (the file grows)."""
    if not data:
        return data, "duplicate on empty input (no-op)"
    start = rng.randrange(len(data))
    length = min(len(data) - start, rng.choice([1, 4, 16, 256, 4096]))
    at = rng.randrange(len(data) + 1)
    out = data[:at] + data[start:start + length] + data[at:]
    return out, f"duplicate [{start}:{start + length}] at {at}"


MUTATORS = (bit_flips, truncate, overwrite, duplicate)


def mutate(data: bytes, rng: random.Random, rounds: int | None = None) -> tuple[bytes, str]:
    """1..3 random byte mutations in a row; the description lists them in order."""
    steps = []
    for _ in range(rounds or rng.randint(1, 3)):
        data, what = rng.choice(MUTATORS)(data, rng)
        steps.append(what)
    return data, "; ".join(steps)
