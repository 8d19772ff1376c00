"""Scoring speed: 1,000 generated pairs of hour-long recordings, all four NEDC scorers.

    /usr/bin/time -v python bench/bench_scoring.py

The pairs are generated in-process and deterministically (seed 0): 0-6 seizures of 10-180 s per
reference; the hypothesis finds most of them with jittered edges, splits some in two, misses some
and adds 0-6 false alarms. Target: under 5 s on 2 cores.
"""
import time

import numpy as np

from brain_go_brrr.scoring import SCORERS, Annotation, format_table, score

HOUR = 3600.0


def disjoint(spans, duration):
    "Sorted spans inside the recording, dropping any that overlaps the one before, rounded to the file's 0.1 ms."
    out = []
    for a, b in sorted((round(max(a, 0.0), 4), round(min(b, duration), 4)) for a, b in spans):
        if a < b and (not out or a > out[-1][1]): out.append((a, b))
    return out


def generate_pair(rng, k):
    starts = rng.uniform(0, HOUR - 200, rng.integers(0, 7))
    seizures = disjoint([(s, s + rng.uniform(10, 180)) for s in starts], HOUR)
    found = []
    for a, b in seizures:
        u = rng.random()
        if u < 0.15: continue  # missed
        a2, b2 = a + rng.normal(0, 8), b + rng.normal(0, 8)
        if u < 0.30 and b2 - a2 > 20:  # split in two
            mid = (a2 + b2) / 2
            found += [(a2, mid - 2), (mid + 2, b2)]
        else:
            found.append((a2, b2))
    found += [(s, s + rng.uniform(5, 60)) for s in rng.uniform(0, HOUR - 60, rng.integers(0, 7))]
    bname = f'bench{k:04d}_s001_t000'
    ref = Annotation([(a, b, 'seiz') for a, b in seizures], HOUR, bname)
    hyp = Annotation([(a, b, 'seiz') for a, b in disjoint(found, HOUR)], HOUR, bname)
    return ref, hyp


def main(n_pairs: int = 1000):
    rng = np.random.default_rng(0)
    pairs = [generate_pair(rng, k) for k in range(n_pairs)]
    t0 = time.perf_counter()
    results = score([r for r, _ in pairs], [h for _, h in pairs], tuple(SCORERS))
    elapsed = time.perf_counter() - t0
    print(format_table(results))
    print(f'scored {n_pairs} hour-long pairs with {", ".join(SCORERS)} in {elapsed:.2f} s')


if __name__ == '__main__':
    main()
