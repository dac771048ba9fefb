"""The data set every store of a kvmap-bench run gets (and bench/'s
pytest-benchmark workloads too): N distinct random keys and random values
drawn from one seed, and the orders the workloads use them in."""

from __future__ import annotations

import random

# (key, value) pairs, as the stores load them
Pairs = list[tuple[bytes, bytes]]


def distinct_keys(rng: random.Random, n: int, key_size: int) -> list[bytes]:
    """n distinct random keys of key_size bytes, in the order drawn."""
    seen = set()
    keys: list[bytes] = []
    while len(keys) < n:
        k = rng.randbytes(key_size)
        if k not in seen:
            seen.add(k)
            keys.append(k)
    return keys


class Data:
    """n pairs of distinct random keys of key_size bytes and random values of
    value_size bytes, in the order drawn (the load order); the keys sorted,
    and in a shuffled order for random gets."""

    def __init__(self, n: int, key_size: int, value_size: int, seed: int) -> None:
        rng = random.Random(seed)
        keys = distinct_keys(rng, n, key_size)
        self.n = n
        self.key_size = key_size
        self.value_size = value_size
        self.keys = keys
        self.pairs: Pairs = [(k, rng.randbytes(value_size)) for k in keys]
        self.sorted_keys = sorted(keys)
        self.get_order = list(keys)
        rng.shuffle(self.get_order)
        self.seed = seed
