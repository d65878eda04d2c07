"""Microseconds per pick for each balancer (pure Python, one core). Bounded: a fixed number of picks per case.

Each case runs in 5 rounds and reports the fastest round, as timeit does: on a shared machine the slower rounds
measure the neighbours.

    venv/bin/python bench/balancer_pick.py            # 200,000 picks per case
    venv/bin/python bench/balancer_pick.py --picks 20000
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Sequence

from fastgate.upstream.balancer import BALANCERS, Balancer, create_balancer

ROUNDS = 5


def measure(balancer: Balancer, picks: int, eligible: Sequence[int] | None, keys: list[bytes] | None) -> float:
    pick = balancer.pick
    per_round = max(picks // ROUNDS, 1)
    best = float("inf")
    for _ in range(ROUNDS):
        if keys is None:
            start = time.perf_counter()
            for _ in range(per_round):
                pick(eligible)
        else:
            start = time.perf_counter()
            for key in keys[:per_round]:
                pick(eligible, key)
        best = min(best, time.perf_counter() - start)
    return best / per_round * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--picks", type=int, default=200_000)
    args = parser.parse_args()
    picks = min(args.picks, 2_000_000)
    keys = [f"user-{i}".encode() for i in range(picks)]
    print(f"{'balancer':16s} {'targets':>7s} {'weights':>8s} {'eligible':>9s} {'us/pick':>8s}")
    for name in BALANCERS:
        for n in (3, 16):
            for weighted in (False, True):
                weights = [1 + (i % 3) * weighted for i in range(n)]
                balancer = create_balancer(name, weights, rng=random.Random(1), names=[f"t{i}" for i in range(n)])
                for label, eligible in (("all", None), ("all-but-1", tuple(range(1, n)))):
                    us = measure(balancer, picks, eligible, keys if name == "consistent_hash" else None)
                    kind = "mixed" if weighted else "equal"
                    print(f"{name:16s} {n:7d} {kind:>8s} {label:>9s} {us:8.3f}")


if __name__ == "__main__":
    main()
