"""Cache-build throughput: hours of 19-channel EEG preprocessed per minute, and peak memory.

    /usr/bin/time -v python bench/bench_cache.py --subjects 24 --workers 2

Generates the synthetic corpus (not timed), builds the train+dev+eval caches with N workers
(timed), and prints hours of EEG, wall seconds, hours per minute and hours per minute per core.
Peak memory: the `Maximum resident set size` line of /usr/bin/time (the largest single process),
compared across --subjects to show it does not grow with the number of recordings.
"""
import argparse, resource, shutil, tempfile, time
from pathlib import Path
from brain_go_brrr.synth import synth_tusz
from brain_go_brrr.cache import build_cache

ap = argparse.ArgumentParser()
ap.add_argument('--subjects', type=int, default=24)
ap.add_argument('--workers', type=int, default=2)
ap.add_argument('--seed', type=int, default=0)
ap.add_argument('--corpus', help='reuse this corpus folder (generated there if missing)')
a = ap.parse_args()

tmp = Path(tempfile.mkdtemp())
corpus = Path(a.corpus) if a.corpus else tmp / 'tusz'
synth_tusz(corpus, subjects=a.subjects, seed=a.seed)
t0 = time.perf_counter()
hours = sum(build_cache(corpus, tmp / 'cache' / s, s, a.workers, progress=False)['hours'] for s in ('train', 'dev', 'eval'))
wall = time.perf_counter() - t0
rss_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
rss_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f'{hours:.2f} h of EEG in {wall:.1f} s with {a.workers} workers: {hours / wall * 60:.1f} h/min, '
      f'{hours / wall * 60 / a.workers:.1f} h/min per core; peak RSS main {rss_self:.0f} MiB, largest worker {rss_children:.0f} MiB')
shutil.rmtree(tmp)
