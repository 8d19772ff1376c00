"""The detector on one CUDA GPU: scan agreement, training-step memory, speed and FLOP rate, inference speed, per scan.

    python bench/gpu_check.py --out gpu_check.json      # exits 2 where torch.cuda.is_available() is False
    python bench/gpu_check.py --smoke --out smoke.json  # SMOKE TEST of this script on the CPU at tiny sizes: numbers mean nothing

Writes one JSON file, rewritten after every section and configuration, so a killed run leaves what it finished:
  environment           torch, CUDA, GPU, mamba_ssm and triton versions (null if absent), the detector's automatic scan
                        backend and the scans compared, the model
  flops                 per window, as torch.utils.flop_counter.FlopCounterMode counts them (matmuls, convolutions) at
                        batch 1: `forward` and `training_step` (forward and backward); the TFLOP/s figures below use them
  scan_cuda_vs_cpu      [backend]: selective_scan on the GPU with backend 'pytorch' and 'triton' (where triton imports)
                        against the CPU (automatic backend), float32 and float64: {"abs": max |diff|, "rel": over max
                        |CPU|} of the output and every input gradient (fixed random cotangent); `*_vs_reference`: the
                        float64 GPU result against selective_scan_reference; `triton_vs_pytorch`: the two GPU scans
  mamba_ssm_vs_pytorch  mamba-ssm's selective_scan_fn against backend='pytorch' (float32), and a Mamba block's forward and
                        backward under bf16 and fp16 autocast through the kernel; {"skipped": ...} without mamba-ssm
  inference             [scan][precision][batch]: eval, no_grad: windows per second, hours of EEG per hour, TFLOP/s
  training_step         [scan][precision][batch], batches 1 to 64, each batch on every scan before the next batch: train_step
                        of the params/gpu_full.yaml detector (dynamic PE on): peak max_memory_allocated (MiB), seconds per
                        step and per window, achieved TFLOP/s and model-FLOPs utilisation (`mfu`, of the GPU's dense peak
                        for the precision, where PEAK_TFLOPS knows the GPU), loss_finite, grads_finite (steps the fp16
                        scaler did not skip), scaler_skipped; {"oom": true} (larger batches of that scan are then skipped);
                        "skipped: ..." past the --budget-s guard; `semi_dynamic_interval_1`: the PE decomposed at every
                        step, bf16, batch 1, automatic scan
Scans: `mamba_ssm_kernel` where it imports, `triton` where triton imports (named as the backend), and `pytorch_scan`
(SEIZURE_MAMBA_FORCE_FALLBACK=1, the switch users have). A failing section or configuration records {"error": ...} and
the run goes on.
"""
import argparse, importlib.metadata, json, math, os, platform, sys, time, traceback
from contextlib import contextmanager, nullcontext
from functools import partial
from types import SimpleNamespace
import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode
from brain_go_brrr import ssm, triton_kernels
from brain_go_brrr.model import Detector, detector_input
from brain_go_brrr.train import param_groups, train_step

FULL = dict(params='params/gpu_full.yaml', lengths=(960, 1000), scan=(19, 128, 16), block=64,
            batches=(1, 4, 8, 16, 32, 64), infer=(16, 64))
SMOKE = dict(params='params/cpu_smoke.yaml', lengths=(30, 31), scan=(2, 8, 4), block=16, batches=(1, 2), infer=(2, 4))
PRECISIONS = {'fp32': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}
TRAIN_PRECISIONS = ('fp32', 'bf16')
BACKENDS = {'mamba_ssm_kernel': 'cuda-kernel', 'triton': 'triton', 'pytorch_scan': 'pytorch'}  # scan path -> backend
# Dense peak TFLOP/s (fp32 without TF32, bf16 tensor cores), NVIDIA's datasheets: H100 SXM and H200 67 / 989,
# H100 PCIe 51 / 756, A100 19.5 / 312. The first name contained in torch.cuda.get_device_name() applies.
PEAK_TFLOPS = {'H200': dict(fp32=67.0, bf16=989.0), 'H100 PCIe': dict(fp32=51.0, bf16=756.0),
               'H100': dict(fp32=67.0, bf16=989.0), 'A100': dict(fp32=19.5, bf16=312.0)}
GUARD_S, TIMED_STEPS, FALLBACK = 420, 3, 'SEIZURE_MAMBA_FORCE_FALLBACK'
NAMES = ('u', 'delta', 'A', 'B', 'C', 'D', 'z', 'delta_bias')

def sync(dev):
    if dev.type == 'cuda': torch.cuda.synchronize(dev)

def reset_peak(dev):
    if dev.type == 'cuda': torch.cuda.reset_peak_memory_stats(dev)

def peak_mib(dev):
    return round(torch.cuda.max_memory_allocated(dev) / 2**20, 1) if dev.type == 'cuda' else None

@contextmanager
def forced_fallback(on: bool):
    "SEIZURE_MAMBA_FORCE_FALLBACK=1 inside when `on` (uses_cuda_kernels reads it at call time); else the environment as it is."
    old = os.environ.get(FALLBACK)
    if on: os.environ[FALLBACK] = '1'
    try: yield
    finally:
        if old is None: os.environ.pop(FALLBACK, None)
        else: os.environ[FALLBACK] = old

def scan_paths(dev) -> list[str]:
    "The scans the detector can run here, the automatic one first; on the CPU (--smoke) the automatic one only."
    if dev.type != 'cuda': return ['pytorch_scan']
    return (['mamba_ssm_kernel'] * ssm.uses_cuda_kernels(torch.empty(0, device=dev))
            + ['triton'] * triton_kernels.triton_available() + ['pytorch_scan'])

@contextmanager
def on_scan(path: str):
    "The detector's scans on `path`: the PyTorch scan by SEIZURE_MAMBA_FORCE_FALLBACK=1, the others by their backend."
    if path == 'pytorch_scan':
        with forced_fallback(True): yield
        return
    automatic = ssm.scan_backend
    ssm.scan_backend = lambda t: BACKENDS[path] if t.is_cuda else automatic(t)   # ssm's callers look it up at call time
    try: yield
    finally: ssm.scan_backend = automatic

def guarded(fn, *args):
    "fn(*args), or {'oom': True} (cache emptied) when the GPU runs out of memory, or {'error': ...}."
    try: return fn(*args)
    except torch.cuda.OutOfMemoryError: pass
    except Exception as e:
        traceback.print_exc()
        return {'error': f'{type(e).__name__}: {e}'}
    torch.cuda.empty_cache()  # out of the except block, which held the failed step's tensors
    return {'oom': True}

# --- selective scans, each as f(u, delta, A, B, C, D, z, delta_bias) -> (L, batch, d), time-first
def time_first(fn, **kw):
    return lambda u, delta, A, B, C, D, z, delta_bias: fn(u, delta, A, B, C, D, z=z, delta_bias=delta_bias, delta_softplus=True, **kw)

def batch_first(fn):
    "A batch-first scan (selective_scan_reference, mamba-ssm's selective_scan_fn) on time-first tensors."
    bf = lambda t: t.permute(1, 2, 0).contiguous()  # (L, batch, c) -> (batch, c, L)
    return lambda u, delta, A, B, C, D, z, delta_bias: fn(
        bf(u), bf(delta), A, bf(B), bf(C), D, z=bf(z), delta_bias=delta_bias, delta_softplus=True).permute(2, 0, 1)

def scan_inputs(L, batch, d, n, dtype):
    "mamba-ssm's test distributions, drawn in float64 on the CPU from a fixed seed, then cast; and a cotangent."
    g = torch.Generator().manual_seed(0)
    randn, rand = (partial(f, generator=g, dtype=torch.float64) for f in (torch.randn, torch.rand))
    t = dict(u=randn(L, batch, d), delta=0.5 * rand(L, batch, d), A=-0.5 * rand(d, n), B=randn(L, batch, n),
             C=randn(L, batch, n), D=randn(d), z=randn(L, batch, d), delta_bias=0.5 * rand(d))
    return {k: v.to(dtype) for k, v in t.items()}, randn(L, batch, d).to(dtype)

def run_scan(fn, inputs, cotangent, dev):
    "Output and every input's gradient, as float64 on the CPU."
    leaves = [inputs[k].to(dev, copy=True).requires_grad_() for k in NAMES]
    out = fn(*leaves)
    grads = torch.autograd.grad(out, leaves, cotangent.to(dev))
    return {k: v.detach().double().cpu() for k, v in zip(['output'] + [f'grad_{k}' for k in NAMES], [out, *grads])}

def diffs(a, b):
    return {k: dict(abs=float((a[k] - b[k]).abs().max()), rel=float((a[k] - b[k]).abs().max() / b[k].abs().max())) for k in a}

def scan_cuda_vs_cpu(out, ctx):
    backends = ['pytorch'] + ['triton'] * (ctx.dev.type == 'cuda' and triton_kernels.triton_available())
    for L in ctx.size['lengths']:
        for dtype in (torch.float32, torch.float64):
            inputs, cot = scan_inputs(L, *ctx.size['scan'], dtype)
            key, cpu = f'L{L}_{str(dtype)[6:]}', run_scan(time_first(ssm.selective_scan), inputs, cot, torch.device('cpu'))
            reference = batch_first(ssm.selective_scan_reference)
            gpu = {}
            for b in backends:
                try: gpu[b] = run_scan(time_first(ssm.selective_scan, backend=b), inputs, cot, ctx.dev)
                except Exception as e:  # one backend's failure (a kernel that does not compile) leaves the other's
                    traceback.print_exc()
                    out.setdefault(b, {})[key] = {'error': f'{type(e).__name__}: {e}'}
                    continue
                out.setdefault(b, {})[key] = diffs(gpu[b], cpu)
                if dtype == torch.float64:
                    out[b][f'{key}_vs_reference'] = diffs(gpu[b], run_scan(reference, inputs, cot, ctx.dev))
            if len(gpu) == 2: out.setdefault('triton_vs_pytorch', {})[key] = diffs(gpu['triton'], gpu['pytorch'])
            ctx.save()

def block_step(block, x, dtype):
    "Output, and whether every gradient is finite, of forward under autocast and backward."
    block.zero_grad(set_to_none=True)
    with torch.autocast(x.device.type, dtype=dtype):
        y = block(x)
    y.float().square().mean().backward()
    return y.detach(), all(bool(torch.isfinite(p.grad).all()) for p in block.parameters() if p.grad is not None)

def mamba_block(block, x, dtype):
    y, grads_finite = block_step(block, x, dtype)
    with forced_fallback(True): y_pytorch, _ = block_step(block, x, dtype)
    return dict(ok=True, uses_cuda_kernels=ssm.uses_cuda_kernels(x), output_dtype=str(y.dtype), output_finite=bool(torch.isfinite(y).all()),
                grads_finite=grads_finite, max_abs_diff_vs_pytorch_scan=float((y.float() - y_pytorch.float()).abs().max()))

def mamba_ssm_vs_pytorch(out, ctx):
    if ssm._cuda_selective_scan is None:
        out['skipped'] = 'mamba_ssm not importable'
        return
    for L in ctx.size['lengths']:
        inputs, cot = scan_inputs(L, *ctx.size['scan'], torch.float32)
        out[f'L{L}_float32'] = diffs(run_scan(batch_first(ssm._cuda_selective_scan), inputs, cot, ctx.dev),
                                     run_scan(time_first(ssm.selective_scan, backend='pytorch'), inputs, cot, ctx.dev))
    torch.manual_seed(0)
    block = ssm.Mamba(ctx.size['block'], 16).to(ctx.dev)
    x = torch.randn(ctx.size['scan'][0], ctx.size['lengths'][0], ctx.size['block'], device=ctx.dev)
    for name in ('bf16', 'fp16'):
        out[f'mamba_block_{name}'] = guarded(mamba_block, block, x, PRECISIONS[name])
        ctx.save()

# --- the detector
def batch_of(ctx, batch):
    g = torch.Generator(ctx.dev).manual_seed(batch)
    x = torch.randn(batch, ctx.cfg.n_channels, ctx.n_samples, device=ctx.dev, generator=g)
    return x, (torch.rand(batch, ctx.n_samples, device=ctx.dev, generator=g) < 0.3).float()

def measure(results, batch, ctx, path, fn, *args):
    "`results[batch] = fn(*args)` on the scan path (guarded), or 'skipped' past the time guard or a smaller batch's OOM."
    if time.perf_counter() > ctx.deadline: results[batch] = 'skipped: past the --budget-s guard'
    elif any(isinstance(r, dict) and r.get('oom') for r in results.values()):
        results[batch] = 'skipped: out of memory at a smaller batch'
    else:
        with on_scan(path): results[batch] = guarded(fn, *args)
    ctx.save()

def flop_rate(result, flops_per_window, per_second, peak):
    "Adds achieved TFLOP/s (and the fraction of `peak`, where known) to a timed configuration's result."
    if isinstance(result, dict) and per_second in result:
        rate = flops_per_window * (result[per_second] if per_second == 'windows_per_second' else 1 / result[per_second])
        result['achieved_tflops'] = rate / 1e12
        result['mfu'] = rate / 1e12 / peak if peak else None

def train_config(model, optimizer, scaler, autocast, x, y, dev):
    "One warm-up and TIMED_STEPS timed steps of train_step, as training runs them."
    reset_peak(dev)
    times, steps, grads_finite = [], [], []
    for _ in range(1 + TIMED_STEPS):
        sync(dev); t0 = time.perf_counter()
        st = train_step(model, x, y, optimizer, scaler, autocast, grad_clip=1.0)
        sync(dev); times.append(time.perf_counter() - t0); steps.append(st)
        if math.isfinite(st.loss) and not st.scaler_skipped:  # backward ran; fp16 overflows are the scaler's to skip
            grads_finite.append(bool(torch.stack([torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None]).all()))
    seconds = sum(times[1:]) / TIMED_STEPS
    return dict(peak_mib=peak_mib(dev), seconds_per_step=seconds, seconds_per_window=seconds / len(x),
                loss_finite=all(math.isfinite(s.loss) for s in steps), grads_finite=all(grads_finite), steps_checked=len(grads_finite),
                scaler_skipped=sum(s.scaler_skipped for s in steps), losses=[s.loss for s in steps], errors=[s.error for s in steps if s.error])

def training(out, ctx):
    "Each precision's model trains at each batch on every scan path in turn, so a cut budget leaves them side by side."
    runs = [(None, ctx.cfg, prec, ctx.size['batches']) for prec in TRAIN_PRECISIONS]
    runs.append(('semi_dynamic_interval_1', ctx.cfg.model_copy(update=dict(semi_dynamic_interval=1)), 'bf16', (1,)))
    for name, cfg, prec, batches in runs:
        torch.manual_seed(0)
        model = Detector(cfg).to(ctx.dev)
        optimizer = torch.optim.AdamW(param_groups(model, 0.01), lr=1e-3)
        scaler = torch.amp.GradScaler(ctx.dev.type, enabled=prec == 'fp16')
        autocast = partial(torch.autocast, ctx.dev.type, dtype=PRECISIONS[prec]) if PRECISIONS[prec] else nullcontext
        for batch in batches:
            for path in [scan_paths(ctx.dev)[0]] if name else scan_paths(ctx.dev):
                results = out.setdefault(name or path, {}).setdefault(prec, {})
                measure(results, batch, ctx, path, train_config, model, optimizer, scaler, autocast,
                        *batch_of(ctx, batch), ctx.dev)
                flop_rate(results[batch], ctx.flops.get('training_step', 0), 'seconds_per_window', ctx.peak.get(prec))
                ctx.save()
        del model, optimizer
        torch.cuda.empty_cache()

@torch.no_grad()
def infer_config(model, dtype, x, window_s, dev):
    reset_peak(dev)
    for i in range(1 + TIMED_STEPS):
        if i == 1: sync(dev); t0 = time.perf_counter()
        with torch.autocast(dev.type, dtype=dtype) if dtype else nullcontext():
            logits = model(x)
    sync(dev)
    per_second = len(x) * TIMED_STEPS / (time.perf_counter() - t0)
    return dict(windows_per_second=per_second, eeg_hours_per_hour=per_second * window_s, peak_mib=peak_mib(dev),
                logits_finite=bool(torch.isfinite(logits).all()))

def inference(out, ctx):
    for path in scan_paths(ctx.dev):
        torch.manual_seed(0)
        model = Detector(ctx.cfg).to(ctx.dev).eval()
        for prec in ('fp32', 'bf16'):
            for batch in ctx.size['infer']:
                results = out.setdefault(path, {}).setdefault(prec, {})
                measure(results, batch, ctx, path,
                        infer_config, model, PRECISIONS[prec], batch_of(ctx, batch)[0], ctx.window_s, ctx.dev)
                flop_rate(results[batch], ctx.flops.get('forward', 0), 'windows_per_second', ctx.peak.get(prec))
                ctx.save()

def flops(out, ctx):
    "FLOPs per window of the forward and of a training step's forward and backward, counted at batch 1."
    torch.manual_seed(0)
    model, (x, _) = Detector(ctx.cfg).to(ctx.dev), batch_of(ctx, 1)
    with torch.no_grad(), FlopCounterMode(display=False) as counter: model.eval()(x)
    out['forward'] = counter.get_total_flops()
    with FlopCounterMode(display=False) as counter: model.train()(x).float().square().mean().backward()
    out['training_step'] = counter.get_total_flops()
    ctx.flops.update(out)

# --- report
def environment(ctx):
    def version(package):
        try: return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError: return None
    with torch.device('meta'): parameters = sum(p.numel() for p in Detector(ctx.cfg).parameters())
    return dict(torch=torch.__version__, cuda=torch.version.cuda, python=platform.python_version(),
                gpu=torch.cuda.get_device_name(ctx.dev) if ctx.dev.type == 'cuda' else 'none: --smoke run on the CPU, numbers mean nothing',
                mamba_ssm=version('mamba_ssm'), mamba_ssm_kernel_imported=ssm._cuda_selective_scan is not None,
                triton=version('triton'), triton_imported=triton_kernels.triton_available(),
                detector_scan_backend=ssm.scan_backend(torch.empty(0, device=ctx.dev)), scan_paths=scan_paths(ctx.dev),
                peak_tflops=ctx.peak, force_fallback_env=os.environ.get(FALLBACK),
                float32_matmul_precision=torch.get_float32_matmul_precision(), params=ctx.size['params'],
                n_samples=ctx.n_samples, parameters=parameters, model=ctx.cfg.model_dump(), timed_steps=TIMED_STEPS)

def clean(o):
    "JSON-safe: non-finite floats as strings."
    if isinstance(o, float) and not math.isfinite(o): return str(o)
    if isinstance(o, dict): return {str(k): clean(v) for k, v in o.items()}
    return [clean(v) for v in o] if isinstance(o, (list, tuple)) else o

def describe(r) -> str:
    if not isinstance(r, dict): return str(r)
    if r.keys() & {'oom', 'error', 'skipped'}: return 'OOM' if r.get('oom') else str(r.get('error') or r['skipped'])[:120]
    rate = (f", {r['achieved_tflops']:.2f} TFLOP/s" + (f", MFU {r['mfu']:.1%}" if r.get('mfu') is not None else '')
            if 'achieved_tflops' in r else '')
    if 'windows_per_second' in r: return f"{r['windows_per_second']:.1f} windows/s, peak {r['peak_mib']} MiB{rate}"
    if 'seconds_per_step' in r:
        bad = '' if r['loss_finite'] and r['grads_finite'] else ', NON-FINITE'
        return (f"{r['seconds_per_window']:.4f} s/window, peak {r['peak_mib']} MiB{rate}, "
                f"{r['scaler_skipped']} scaler skips{bad}")
    if not all(isinstance(v, dict) and 'rel' in v for v in r.values()): return json.dumps(clean(r))
    worst = max(r, key=lambda k: (not math.isfinite(r[k]['rel']), r[k]['rel']))  # a NaN first
    return f"largest relative difference {r[worst]['rel']:.2e} ({worst})"

def summary(node, path='') -> list[str]:
    "One line per comparison and configuration."
    if isinstance(node, dict) and set(node) != {'error'} and not node.keys() & {'oom', 'ok', 'seconds_per_step', 'windows_per_second', 'output', 'skipped'}:
        return [line for k, v in node.items() for line in summary(v, f'{path} {k}'.strip())]
    return [f'{path}: {describe(node)}']

def utilisation(training_step) -> dict:
    "The best model-FLOPs utilisation of a training step, per scan and precision."
    return {f'{path} {prec}': max(mfus, default=None)
            for path, precs in training_step.items() if isinstance(precs, dict)
            for prec, runs in precs.items() if isinstance(runs, dict)
            for mfus in [[r['mfu'] for r in runs.values() if isinstance(r, dict) and r.get('mfu') is not None]]}

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog='python bench/gpu_check.py', description=__doc__.split('\n')[0])
    ap.add_argument('--out', default='gpu_check.json', help='JSON file to write (default gpu_check.json)')
    ap.add_argument('--smoke', action='store_true', help='SMOKE TEST of this script on the CPU at tiny sizes; the numbers mean nothing')
    ap.add_argument('--budget-s', type=float, default=GUARD_S,
                    help=f'configurations starting after this many seconds are skipped (default {GUARD_S})')
    a = ap.parse_args(argv)
    if not (a.smoke or torch.cuda.is_available()):
        print('gpu_check: torch.cuda.is_available() is False: run it on a machine with a CUDA GPU (--smoke tests the script on the CPU)', file=sys.stderr)
        return 2
    start, size = time.perf_counter(), SMOKE if a.smoke else FULL
    cfg, n_samples = detector_input(size['params'])
    with open(size['params']) as f: window_s = n_samples / yaml.safe_load(f)['sfreq']

    def save():
        with open(a.out + '.tmp', 'w') as f: json.dump(clean(report), f, indent=1)
        os.replace(a.out + '.tmp', a.out)

    dev = torch.device('cpu' if a.smoke else 'cuda')
    gpu = torch.cuda.get_device_name(dev) if dev.type == 'cuda' else ''
    peak = next((p for name, p in PEAK_TFLOPS.items() if name in gpu), {})
    ctx = SimpleNamespace(dev=dev, size=size, cfg=cfg, n_samples=n_samples, window_s=window_s,
                          deadline=start + a.budget_s, save=save, flops={}, peak=peak)
    report = dict(environment=environment(ctx))
    save()
    for name, run in dict(flops=flops, scan_cuda_vs_cpu=scan_cuda_vs_cpu, mamba_ssm_vs_pytorch=mamba_ssm_vs_pytorch,
                          inference=inference, training_step=training).items():
        report[name] = {}
        try: run(report[name], ctx)
        except Exception as e:
            traceback.print_exc()
            report[name]['error'] = f'{type(e).__name__}: {e}'
        save()
    report['model_flops_utilisation'] = utilisation(report.get('training_step', {}))
    report['seconds'] = time.perf_counter() - start
    save()
    print('\n'.join(summary({k: v for k, v in report.items()
                              if k not in ('environment', 'seconds', 'model_flops_utilisation')})))
    best = ', '.join(f'{k} {v:.2%}' if v is not None else f'{k} n/a' for k, v in report['model_flops_utilisation'].items())
    print(f"model FLOPs utilisation, best training step (peak {ctx.peak or 'unknown for this GPU'}): {best}")
    print(f'wrote {a.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
