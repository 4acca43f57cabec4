"""The NTP/NTS fuzz entry points survive random mutations of their seeds (a short smoke
run; benchmarks/bench_fuzz.py runs them coverage-guided for longer)."""

from __future__ import annotations

import random

import pytest
from fuzz_targets_ntp import SEEDS, TARGETS
from hostile import mutate


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_fuzz_target_raises_nothing_undocumented(name: str) -> None:
    rng = random.Random(14)
    target = TARGETS[name]
    for seed in SEEDS[name]:
        target(seed)
    for i in range(3000):
        data = mutate(rng.choice(SEEDS[name]), rng) if i % 4 else rng.randbytes(
            rng.randint(0, 300))
        target(data)
