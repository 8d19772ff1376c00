"""The reference-size detector (params/gpu_full.yaml) with this project's selective scan against the stored-states scan
it replaced (bench/baseline_scan.py), side by side in one run; one Mamba block against mambapy 1.2; and the detector's
inference beside the published SeizureTransformer baseline's (params/seizure_transformer.yaml, Wu et al. 2025).

Every figure comes from fresh processes, the two implementations alternating (A B A B ...), so a machine whose speed
drifts affects both alike; ratios are taken pair by pair and their median reported. Peak memory is each process's
peak resident set (what `/usr/bin/time -v` reports as "Maximum resident set size").

    python bench/bench_detector.py                       # everything, about 13 minutes on 2 cores
    python bench/bench_detector.py --only block --out block.json
    python bench/bench_detector.py --only seizure_transformer
    python bench/bench_detector.py --only launches       # operations per step, per scan backend (9 min)

Measures:
  train    one training step (forward + backward, batch 1, one 60-s window): seconds and peak memory;
  infer    inference (batch 1, no_grad): seconds per 60-s window and hours of EEG per hour (wall and CPU);
  block    one Mamba block, 19 x 960 x 64, d_state 16, forward + backward on 1 thread: ours, the baseline, mambapy;
  length   peak memory of a training step at 15, 60 and 240-s windows (this project's scan): the fitted slope;
  seizure_transformer  inference (batch 1, no_grad, 60-s window) of the V3 detector and of SeizureTransformer at its
           published size (37.8M parameters), alternating, each in a fresh process: seconds and peak memory;
  launches operations PyTorch dispatches (each a trip through the dispatcher, most a kernel launch on a GPU) in one
           training step (batch 1, fp32) and one inference window, counted on CPU tensors, so the same on every machine:
           the 'pytorch' and 'cpu-kernel' scans on the reference detector over 60 s; 'cpu-kernel' and 'triton' (in
           Triton's interpreter, each launch one operation) on the reference's layers at small widths over 5 s, which
           dispatch exactly the reference's operations (checked in nbs/api/07_model.ipynb).
"""
import argparse, collections, json, os, resource, statistics, subprocess, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PARAMS = {'v3': ROOT / 'params/gpu_full.yaml', 'seizure_transformer': ROOT / 'params/seizure_transformer.yaml'}


def rusage_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(job: str, scan: str, seconds: int, repeats: int, threads: int, model_name: str = 'v3',
           layout: str = 'reference') -> dict:
    "One measurement in this (fresh) process; printed as one JSON line."
    import torch
    torch.set_num_threads(threads)
    if job == 'block': return block_worker(repeats)
    if job == 'launches': return launches_worker(scan, seconds, layout)
    if scan == 'baseline':
        from baseline_scan import use_baseline_scan
        use_baseline_scan()
    from brain_go_brrr.model import build_detector, detector_input
    cfg, _ = detector_input(PARAMS[model_name])
    torch.manual_seed(0)
    model = build_detector(cfg).train(job != 'infer')
    x = torch.randn(1, cfg.n_channels, seconds * 256)
    baseline_rss = peak_rss_mib()

    def step():
        if job == 'infer':
            with torch.no_grad(): model(x)
        else:
            model.zero_grad(set_to_none=True)
            model(x).float().mean().backward()

    step()                                                   # warm-up: allocator, kernel load, first-touch pages
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), rusage_cpu()
        step()
        wall.append(time.perf_counter() - t0)
        cpu.append(rusage_cpu() - c0)
    return dict(job=job, scan=scan, model=model_name, seconds=seconds, threads=threads, wall_s=min(wall),
                cpu_s=min(cpu),
                peak_rss_mib=peak_rss_mib(), rss_before_step_mib=baseline_rss)


def launches_worker(backend: str, seconds: int, layout: str) -> dict:
    "Operations dispatched by one training step and one inference window of the detector, `backend` scanning."
    import torch
    from brain_go_brrr import ssm
    from brain_go_brrr.model import REFERENCE_LAYOUT, Detector, detector_input, step_launches
    ssm.scan_backend = lambda t: backend                   # every Mamba block's scan and convolution
    cfg = detector_input(PARAMS['v3'])[0] if layout == 'reference' else REFERENCE_LAYOUT
    torch.manual_seed(0)
    model, x = Detector(cfg), torch.randn(1, cfg.n_channels, seconds * 256)
    result = dict(job='launches', backend=backend, layout=layout, seconds=seconds)
    for job, train in (('train', True), ('infer', False)):
        ops, blocks = collections.Counter(), collections.Counter()
        for (block, op), n in step_launches(model, x, train).items():
            ops[op] += n
            blocks[block or '(outside blocks)'] += n
        result[job] = dict(total=sum(ops.values()), top_ops=dict(ops.most_common(12)),
                           blocks=dict(blocks.most_common()))
    return result


def launches() -> list[dict]:
    """`launches_worker` in a fresh process per count: the PyTorch and CPU-kernel scans on the reference, then the CPU
    kernel and Triton's (in its interpreter, hours at the reference size) on its layout at small widths over 5 s."""
    from brain_go_brrr.triton_kernels import triton_available
    counts = [('pytorch', 'reference', 60), ('cpu-kernel', 'reference', 60), ('cpu-kernel', 'small', 5)]
    counts += [('triton', 'small', 5)] if triton_available() else []
    interpreted = {'TRITON_INTERPRET': '1'}                # CPU tensors: Triton's kernels in its interpreter
    return [run_worker('launches', backend, seconds=seconds, layout=layout, extra_env=interpreted)
            for backend, layout, seconds in counts]


def block_worker(repeats: int) -> dict:
    "Forward + backward of one Mamba block on 19 x 960 x 64: this project's, the baseline's and mambapy's, interleaved."
    import copy, torch
    from mambapy.mamba import MambaBlock, MambaConfig
    from brain_go_brrr import ssm
    from baseline_scan import baseline_forward
    torch.manual_seed(0)
    theirs = MambaBlock(MambaConfig(d_model=64, n_layers=1, d_state=16))
    ours = ssm.Mamba(64, 16)
    ours.load_state_dict(theirs.state_dict())
    baseline = copy.deepcopy(ours)
    baseline.forward = baseline_forward.__get__(baseline)
    x = torch.randn(19, 960, 64)
    times = {'ours': [], 'baseline': [], 'mambapy': []}
    outputs = {}
    for _ in range(repeats + 1):
        for name, block in (('ours', ours), ('baseline', baseline), ('mambapy', theirs)):
            block.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            y = block(x)
            y.square().mean().backward()
            times[name].append(time.perf_counter() - t0)
            outputs[name] = y.detach()
    best = {k: min(v[1:]) for k, v in times.items()}             # the first round warms up
    diff = lambda a, b: (outputs[a] - outputs[b]).abs().max().item()
    return dict(job='block', threads=torch.get_num_threads(), seconds_fwd_bwd=best,
                mambapy_over_ours=best['mambapy'] / best['ours'], baseline_over_ours=best['baseline'] / best['ours'],
                max_diff_vs_mambapy=diff('ours', 'mambapy'), max_diff_vs_baseline=diff('ours', 'baseline'))


def run_worker(job, scan='ours', seconds=60, repeats=2, threads=2, model_name='v3', layout='reference',
               extra_env=None) -> dict:
    "A fresh interpreter for one measurement (`scan`: 'ours', 'baseline', or the backend whose launches to count)."
    cmd = [sys.executable, __file__, '--worker', job, '--scan', scan, '--seconds', str(seconds), '--repeats', str(repeats),
           '--threads', str(threads), '--model', model_name, '--layout', layout]
    env = os.environ | {'OMP_NUM_THREADS': str(threads), 'PYTHONPATH': os.pathsep.join([str(ROOT / 'bench'), str(ROOT)])}
    env |= extra_env or {}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode: raise RuntimeError(f'{" ".join(cmd)} failed:\n{out.stderr[-3000:]}')
    return json.loads(out.stdout.strip().splitlines()[-1])


KEYS = ('wall_s', 'cpu_s', 'peak_rss_mib', 'rss_before_step_mib')


def alternating(pairs, first: dict, second: dict) -> tuple[list, dict, dict]:
    "`pairs` rounds of the `first` then the `second` measurement, each a fresh process; the runs and each one's medians."
    runs = [(run_worker(**first), run_worker(**second)) for _ in range(pairs)]
    median = lambda who: {k: statistics.median(r[who][k] for r in runs) for k in KEYS}
    return runs, median(0), median(1)


def paired(job, pairs, repeats) -> dict:
    "`pairs` rounds of baseline then ours, each a fresh process; per-pair ratios baseline / ours."
    runs, baseline, ours = alternating(pairs, dict(job=job, scan='baseline', repeats=repeats),
                                       dict(job=job, repeats=repeats))
    ratio = lambda key: statistics.median(b[key] / o[key] for b, o in runs)
    return dict(baseline=baseline, ours=ours, speedup_wall=ratio('wall_s'), memory_ratio=ratio('peak_rss_mib'), runs=runs)


def beside_baseline(pairs, repeats) -> dict:
    "`pairs` rounds of V3 then SeizureTransformer inference, each a fresh process; per-pair ratios ST / V3."
    runs, v3, st = alternating(pairs, dict(job='infer', repeats=repeats),
                               dict(job='infer', repeats=repeats, model_name='seizure_transformer'))
    ratio = statistics.median(s['wall_s'] / v['wall_s'] for v, s in runs)
    return dict(v3=v3, seizure_transformer=st, st_over_v3_wall=ratio, runs=runs)


def memory_against_length(lengths=(15, 60, 240)) -> dict:
    "Peak memory of one training step (this project's scan) per window length, and the least-squares line through it."
    peaks = [run_worker('train', 'ours', seconds=s, repeats=1)['peak_rss_mib'] for s in lengths]
    mx, my = sum(lengths) / len(lengths), sum(peaks) / len(peaks)
    slope = sum((x - mx) * (y - my) for x, y in zip(lengths, peaks)) / sum((x - mx) ** 2 for x in lengths)
    fitted = [my + slope * (x - mx) for x in lengths]
    return dict(seconds=list(lengths), peak_rss_mib=peaks, slope_mib_per_minute=slope * 60,
                intercept_mib=my - slope * mx, worst_residual_mib=max(abs(a - b) for a, b in zip(peaks, fitted)))


def report(results: dict) -> str:
    lines = []
    if 'train' in results:
        t = results['train']
        lines.append(f"training step, batch 1, 60-s window (2 threads): {t['baseline']['wall_s']:.2f} s -> "
                     f"{t['ours']['wall_s']:.2f} s ({t['speedup_wall']:.1f}x faster); peak memory "
                     f"{t['baseline']['peak_rss_mib'] / 1024:.2f} GiB -> {t['ours']['peak_rss_mib'] / 1024:.2f} GiB")
    if 'infer' in results:
        t = results['infer']
        o = t['ours']
        lines.append(f"inference, batch 1, 60-s window (2 threads): {t['baseline']['wall_s']:.2f} s -> {o['wall_s']:.2f} s "
                     f"({t['speedup_wall']:.1f}x faster): {60 / o['wall_s']:.0f} h of EEG per hour, "
                     f"{60 / o['cpu_s']:.0f} h per CPU-hour")
    if 'block' in results:
        b = results['block']
        s = b['seconds_fwd_bwd']
        lines.append(f"Mamba block 19 x 960 x 64, forward + backward, 1 thread: ours {s['ours']:.3f} s, baseline "
                     f"{s['baseline']:.3f} s, mambapy {s['mambapy']:.3f} s ({b['mambapy_over_ours']:.1f}x faster than mambapy)")
    if 'length' in results:
        m = results['length']
        pts = ', '.join(f'{s} s: {p:.0f} MiB' for s, p in zip(m['seconds'], m['peak_rss_mib']))
        lines.append(f"training-step peak memory against window length: {pts}; slope {m['slope_mib_per_minute']:.0f} "
                     f"MiB per minute of EEG, worst residual from the line {m['worst_residual_mib']:.0f} MiB")
    if 'seizure_transformer' in results:
        t = results['seizure_transformer']
        v, s = t['v3'], t['seizure_transformer']
        lines.append(f"inference beside the baseline, batch 1, 60-s window (2 threads): V3 detector "
                     f"{v['wall_s']:.2f} s ({60 / v['wall_s']:.0f} h of EEG per hour, peak {v['peak_rss_mib']:.0f} MiB); "
                     f"SeizureTransformer "
                     f"{s['wall_s']:.2f} s ({60 / s['wall_s']:.0f} h per hour, peak {s['peak_rss_mib']:.0f} MiB); "
                     f"ratio {t['st_over_v3_wall']:.2f}")
    if 'launches' in results:
        lines += launches_report(results['launches'])
    return '\n'.join(lines)


def launches_report(counts: list[dict]) -> list[str]:
    "The launch counts as lines: totals per backend and model, then each count's top operations in a training step."
    layouts = {'reference': 'reference (params/gpu_full.yaml)',
               'small': 'its layers at small widths (REFERENCE_LAYOUT)'}
    lines = ['operations dispatched at batch 1, fp32 (training step: forward + backward; inference: no_grad forward):',
             f'  {"backend":<12}{"model":<48}{"window":>7}{"training step":>15}{"inference":>11}']
    lines += [f'  {c["backend"]:<12}{layouts[c["layout"]]:<48}{c["seconds"]:>5} s{c["train"]["total"]:>15,}'
              f'{c["infer"]["total"]:>11,}' for c in counts]
    for c in counts:
        top = ', '.join(f'{op} {n:,}' for op, n in c['train']['top_ops'].items())
        blocks = ', '.join(f'{block} {n:,}' for block, n in c['train']['blocks'].items())
        name = f'{c["backend"]}, {c["layout"]}, {c["seconds"]} s'
        lines += [f'  {name}: top operations: {top}', f'  {name}: per block: {blocks}']
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(prog='python bench/bench_detector.py', description=__doc__.split('\n\n')[0])
    p.add_argument('--only', nargs='*',
                   choices=['train', 'infer', 'block', 'length', 'seizure_transformer', 'launches'],
                   help='a subset of the measurements')
    p.add_argument('--pairs', type=int, default=2, help='baseline/ours process pairs per measurement (default 2)')
    p.add_argument('--out', type=Path, default=ROOT / 'outputs/bench/bench_detector.json', help='JSON written here')
    p.add_argument('--worker', choices=['train', 'infer', 'block', 'launches'], help=argparse.SUPPRESS)
    p.add_argument('--scan', default='ours', help=argparse.SUPPRESS)
    p.add_argument('--seconds', type=int, default=60, help=argparse.SUPPRESS)
    p.add_argument('--layout', default='reference', choices=['reference', 'small'], help=argparse.SUPPRESS)
    p.add_argument('--repeats', type=int, default=2, help=argparse.SUPPRESS)
    p.add_argument('--threads', type=int, default=2, help=argparse.SUPPRESS)
    p.add_argument('--model', default='v3', choices=tuple(PARAMS), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        print(json.dumps(worker(a.worker, a.scan, a.seconds, a.repeats, a.threads, a.model, a.layout)))
        return 0
    jobs = a.only or ['train', 'infer', 'block', 'length', 'seizure_transformer', 'launches']
    results = {}
    for job in jobs:
        print(f'measuring {job} ...', file=sys.stderr, flush=True)
        if job == 'train': results[job] = paired('train', a.pairs, repeats=1)
        elif job == 'infer': results[job] = paired('infer', a.pairs, repeats=3)
        elif job == 'block': results[job] = run_worker('block', repeats=3, threads=1)
        elif job == 'seizure_transformer': results[job] = beside_baseline(a.pairs, repeats=3)
        elif job == 'launches': results[job] = launches()
        else: results[job] = memory_against_length()
    import torch
    params = {k: str(v.relative_to(ROOT)) for k, v in PARAMS.items()}
    results['machine'] = dict(cpus=os.cpu_count(), torch=torch.__version__, params=params)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(results, indent=1))
    print(report(results))
    print(f'wrote {a.out}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
