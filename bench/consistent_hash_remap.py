"""Balance and remapping of consistent_hash (Maglev, 65,537 entries) for N targets and a fixed set of keys.

    venv/bin/python bench/consistent_hash_remap.py              # N = 5, 100,000 keys
    venv/bin/python bench/consistent_hash_remap.py -n 8 --keys 20000

Prints each target's share of the keys (largest and smallest over the mean), the fraction of keys that move when
one target is removed or one is added (ideal: 1/N and 1/(N+1)), how a down target's keys spread over the others,
and the table build time. Bounded: one pass over the keys per table.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

from fastgate.upstream.balancer import ConsistentHash


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=5)
    parser.add_argument("--keys", type=int, default=100_000)
    args = parser.parse_args()
    n = max(args.n, 2)
    keys = [f"user-{i}".encode() for i in range(min(args.keys, 1_000_000))]
    names = [f"10.0.0.{i}:8080" for i in range(1, n + 2)]

    start = time.perf_counter()
    base = ConsistentHash([1] * n, names=names[:n])
    build_ms = (time.perf_counter() - start) * 1000
    home = [names[base.pick(key=k)] for k in keys]
    counts = Counter(home)
    mean = len(keys) / n
    print(f"N={n}, {len(keys)} keys, table built in {build_ms:.0f} ms")
    print(
        f"  largest share {max(counts.values()) / mean:.3f} x mean, smallest {min(counts.values()) / mean:.3f} x mean"
    )

    removed = names[:1] + names[2:n]  # remove the second target
    fewer = ConsistentHash([1] * (n - 1), names=removed)
    moved = sum(h != removed[fewer.pick(key=k)] for h, k in zip(home, keys, strict=True)) / len(keys)
    print(f"  remove 1 of {n}: {moved:.2%} of keys move (ideal {1 / n:.2%})")

    more = ConsistentHash([1] * (n + 1), names=names[: n + 1])
    moved = sum(h != names[more.pick(key=k)] for h, k in zip(home, keys, strict=True)) / len(keys)
    print(f"  add a target to {n}: {moved:.2%} of keys move (ideal {1 / (n + 1):.2%})")

    eligible = tuple(i for i in range(n) if i != 1)
    spread = Counter(base.pick(eligible, k) for k in keys if base.pick(key=k) == 1)
    total = sum(spread.values())
    shares = ", ".join(f"{names[i]} {spread[i] / total:.1%}" for i in eligible)
    print(f"  target {names[1]} down: its keys go to {shares}")


if __name__ == "__main__":
    main()
