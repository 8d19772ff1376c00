"""Detection speed: hours of EEG per minute at the CPU default and reference sizes and the baseline's, in fresh processes.

    python bench/bench_detect.py                 # a 1-h recording, every size; writes outputs/bench/bench_detect.json
    python bench/bench_detect.py --hours 0.25 --only cpu_smoke
    python bench/bench_detect.py --device cuda --batch-size 64   # on a GPU
    python bench/bench_detect.py --entry szcore --threads 2 --out bench/results/bench_szcore_cpu.json

Each run is `python -m brain_go_brrr detect` on one generated 19-channel EDF at 256 Hz (no figures, a fixed threshold),
with the detector's weights random: speed does not depend on them. Wall time counts the whole command (imports,
reading, preprocessing, inference, writing); peak memory is the process's maximum resident set (`ru_maxrss`).

`--entry szcore` runs SzCORE's entry point instead (`python -m brain_go_brrr szcore IN.edf OUT.tsv`) on an EDF in
SzCORE's format (`Fp1-Avg`... common average, 256 Hz) as its container does: on the CPU, with a fresh folder for the
C++ kernels, so their compilation (once per container run) is counted, and compares the speed with SzCORE's budget.
"""
import argparse, json, os, subprocess, sys, tempfile, time
from pathlib import Path
import numpy as np
from brain_go_brrr.synth import write_szcore_edf
from brain_go_brrr.checkpoints import save_checkpoint
from brain_go_brrr.model import build_detector
from brain_go_brrr.normalization import NormStats
from brain_go_brrr.params import load_params
from brain_go_brrr.signal import CHANNELS
from brain_go_brrr.synth import write_edf

SIZES = {'cpu_smoke': 'params/cpu_smoke.yaml', 'gpu_full': 'params/gpu_full.yaml',
         'seizure_transformer': 'params/seizure_transformer.yaml'}
# SzCORE's budget for one hour of EEG (esl-epfl/szcore at 51d1ded, website/content/challenge-description/index.md)
BUDGET = dict(minutes_per_hour_of_eeg=15, cpu_cores=10, peak_ram_gb=40,
              source='esl-epfl/szcore@51d1ded website/content/challenge-description/index.md')
CHILD = ("import resource, sys, time\nfrom brain_go_brrr.cli import main\nt = time.perf_counter()\nrc = main(sys.argv[1:])\n"
         "print('BENCH', time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\nsys.exit(rc)")


def random_detector_checkpoint(params_file: str, path: Path) -> Path:
    "A detector checkpoint with the parameters of `params_file` and random weights."
    p = load_params(params_file)
    model = build_detector(p.model, p.edge_clamp)
    stats = NormStats(np.zeros(19), np.full(19, 20.0), 'uV', list(CHANNELS), 1, {'source': 'bench'})
    save_checkpoint(path, dict(model=model.state_dict(), params=p.model_dump(mode='json'), norm_stats=stats.to_dict()))
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--hours', type=float, default=1.0, help='length of the generated recording (default 1)')
    ap.add_argument('--only', choices=tuple(SIZES), help='one size only')
    ap.add_argument('--device', default='cpu', help='cpu (default) or cuda')
    ap.add_argument('--batch-size', type=int, default=8, help='windows per forward pass (default 8)')
    ap.add_argument('--entry', choices=('detect', 'szcore'), default='detect',
                    help="the command to time: detect (default), or SzCORE's one-file entry point (CPU only)")
    ap.add_argument('--threads', type=int, help='OMP_NUM_THREADS of the timed command (default: inherited)')
    ap.add_argument('--out', default='outputs/bench/bench_detect.json')
    a = ap.parse_args(argv)
    if a.entry == 'szcore' and a.device != 'cpu': ap.error("--entry szcore: SzCORE's entry point runs on the CPU")
    results = {}
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        rng = np.random.default_rng(0)
        n = int(a.hours * 3600 * 256)
        edf = (write_szcore_edf(d / 'recording.edf', rng.normal(0, 20, (19, n))) if a.entry == 'szcore' else
               write_edf(d / 'recording.edf', {f'EEG {c}-REF': rng.normal(0, 20, n) for c in CHANNELS}, 256))
        for name, params_file in SIZES.items():
            if a.only and name != a.only: continue
            ck = random_detector_checkpoint(params_file, d / f'{name}.pt')
            env = dict(os.environ, **({'OMP_NUM_THREADS': str(a.threads)} if a.threads else {}))
            if a.entry == 'szcore':
                env['TORCH_EXTENSIONS_DIR'] = str(d / f'{name}.torch_extensions')  # a fresh container's
                args = ['szcore', str(edf), str(d / f'{name}.tsv'), '--checkpoint', str(ck), '--threshold', '0.5',
                        '--batch-size', str(a.batch_size)]
            else:
                args = ['detect', '--checkpoint', str(ck), str(edf), '--out', str(d / name), '--threshold', '0.5',
                        '--no-figures', '--device', a.device, '--batch-size', str(a.batch_size)]
            r = subprocess.run([sys.executable, '-c', CHILD, *args], capture_output=True, text=True, env=env)
            if r.returncode: sys.exit(f'{name}: {a.entry} failed:\n{r.stderr[-2000:]}')
            seconds, kb = map(float, r.stdout.split('BENCH')[1].split())
            results[name] = dict(params=params_file, entry=a.entry, device=a.device, threads=a.threads,
                                 batch_size=a.batch_size, hours_of_eeg=a.hours, wall_s=round(seconds, 1),
                                 hours_of_eeg_per_minute=round(a.hours / (seconds / 60), 3),
                                 peak_rss_mib=round(kb / 1024))
            line = (f'{name}: {a.hours:g} h of EEG in {seconds:.0f} s: '
                    f'{results[name]["hours_of_eeg_per_minute"]:.2f} h of EEG per minute, '
                    f'peak {results[name]["peak_rss_mib"]} MiB')
            if a.entry == 'szcore':  # SzCORE allows 15 min per hour of EEG on 10 cores: 1/15 h per minute
                used = seconds / 60 / a.hours
                results[name]['minutes_per_hour_of_eeg'] = round(used, 2)
                results[name]['budget_over_used'] = round(BUDGET['minutes_per_hour_of_eeg'] / used, 1)
                line += (f'; {used:.2f} min per hour of EEG on {a.threads or "inherited"} threads against SzCORE\'s '
                         f'{BUDGET["minutes_per_hour_of_eeg"]} min on {BUDGET["cpu_cores"]} cores: '
                         f'{"inside it" if used <= BUDGET["minutes_per_hour_of_eeg"] else "OVER it"} '
                         f'(budget / used {results[name]["budget_over_used"]:g})')
            print(line)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    record = dict(results=results, when=time.strftime('%Y-%m-%d %H:%M'), cpus=os.cpu_count())
    if a.entry == 'szcore': record['szcore_budget'] = BUDGET
    Path(a.out).write_text(json.dumps(record, indent=1))
    print(f'wrote {a.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
