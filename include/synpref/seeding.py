"""Seeded, order-free randomness: every "random" choice of the pipeline is a hash of its salt and the item's id.

A choice made this way does not depend on the order rows arrive in, on the process, or on the Python hash
seed, so re-runs, retries and mapped tasks make the same choices. The salt names the choice (``"probe"``,
``"spot"``, ...) so that two choices over the same items are independent.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from typing import TypeVar

T = TypeVar("T")


def seeded_digest(*parts: object) -> bytes:
    """sha256 of the parts joined by ``:``."""
    return hashlib.sha256(":".join(map(str, parts)).encode()).digest()


def seeded_rank(*parts: object) -> str:
    """A sort key: the hex digest of the parts."""
    return seeded_digest(*parts).hex()


def seeded_int(*parts: object) -> int:
    """A 32-bit integer from the parts."""
    return int.from_bytes(seeded_digest(*parts)[:4], "big")


def seeded_sample(items: Iterable[T], n: int | None, *salt: object, key: Callable[[T], str] | None = None) -> list[T]:
    """The first ``n`` items (all when ``None``) in the order of ``seeded_rank(*salt, key(item))``."""
    key = key or (lambda item: item["pair_id"])  # type: ignore[index]
    ranked = sorted(items, key=lambda item: seeded_rank(*salt, key(item)))
    return ranked if n is None else ranked[:n]
