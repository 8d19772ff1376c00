"""Forward+backward time of a Mamba stack on CPU: brain_go_brrr's chunked scan vs mambapy's parallel scan
vs the published per-step reference formula (mamba-ssm's `selective_scan_ref`, re-implemented).

All three run the same model: mambapy's `Mamba` (pre-norm residual blocks) whose mixers are swapped for
ours with the same state dict, so the outputs must agree and only the scan differs.

    OMP_NUM_THREADS=1 python bench/bench_scan.py                    # B8 L1024 d_model 64, 2 layers
    OMP_NUM_THREADS=1 python bench/bench_scan.py --reference-length 128   # reference formula at a shorter length
"""
import argparse, copy, time
import torch
import torch.nn.functional as F
from mambapy.mamba import Mamba as MambapyStack, MambaConfig
from brain_go_brrr.ssm import Mamba, selective_scan_reference, wide


class ReferenceScanMamba(Mamba):
    "Our block with the per-step reference formula as its scan."
    def forward(self, x):
        L = x.shape[1]
        u, z = self.in_proj(x).chunk(2, dim=-1)
        u = F.silu(self.conv1d(u.transpose(1, 2))[..., :L])                      # (batch, d_inner, L)
        dt, B, C = self.x_proj(u.transpose(1, 2)).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = (dt @ self.dt_proj.weight.t()).transpose(1, 2)
        y = selective_scan_reference(u, dt, -torch.exp(wide(self.A_log)), B.transpose(1, 2), C.transpose(1, 2),
                                     wide(self.D), z=z.transpose(1, 2), delta_bias=wide(self.dt_proj.bias), delta_softplus=True)
        return self.out_proj(y.transpose(1, 2))


def with_mixers(stack, block_class):
    "A copy of a mambapy stack whose mixers are `block_class` blocks holding the same parameters."
    stack = copy.deepcopy(stack)
    cfg = stack.config
    for layer in stack.layers:
        mixer = block_class(cfg.d_model, cfg.d_state, cfg.d_conv, cfg.expand_factor)
        mixer.load_state_dict(layer.mixer.state_dict())
        layer.mixer = mixer
    return stack


def time_step(model, x, repeats):
    "Best forward and backward seconds over `repeats` (after one warm-up when repeats > 1) and the output."
    fwd, bwd = [], []
    for _ in range(repeats + (repeats > 1)):
        model.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        y = model(x)
        t1 = time.perf_counter()
        y.square().mean().backward()
        fwd.append(t1 - t0); bwd.append(time.perf_counter() - t1)
    return min(fwd[-repeats:]), min(bwd[-repeats:]), y.detach()


def main(argv=None):
    p = argparse.ArgumentParser(prog='python bench/bench_scan.py', description=__doc__.split('\n')[0])
    p.add_argument('--batch', type=int, default=8)
    p.add_argument('--length', type=int, default=1024)
    p.add_argument('--d-model', type=int, default=64)
    p.add_argument('--d-state', type=int, default=16)
    p.add_argument('--layers', type=int, default=2)
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--reference-length', type=int, default=None, help='length for the per-step reference (default --length; 0 skips it)')
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    mambapy = MambapyStack(MambaConfig(d_model=a.d_model, n_layers=a.layers, d_state=a.d_state))
    ours, reference = with_mixers(mambapy, Mamba), with_mixers(mambapy, ReferenceScanMamba)
    x = torch.randn(a.batch, a.length, a.d_model)
    print(f'batch {a.batch}, length {a.length}, d_model {a.d_model}, d_state {a.d_state}, {a.layers} layers, '
          f'{a.threads} thread(s), torch {torch.__version__}; forward+backward seconds (best of {a.repeats})')
    rows, outputs = [], {}
    for name, model in [('mambapy (parallel scan)', mambapy), ('brain_go_brrr (chunked scan)', ours)]:
        f, b, outputs[name] = time_step(model, x, a.repeats)
        rows.append((name, a.length, f, b))
    ref_len = a.length if a.reference_length is None else a.reference_length
    if ref_len:
        f, b, y = time_step(reference, x[:, :ref_len], 1)
        rows.append(('selective_scan_ref formula (per step)', ref_len, f, b))
        print(f'max |ours - reference| at length {ref_len}: {(ours(x[:, :ref_len]) - y).abs().max().item():.2e}')
    print(f"max |ours - mambapy|: {(outputs['brain_go_brrr (chunked scan)'] - outputs['mambapy (parallel scan)']).abs().max().item():.2e}")
    print(f"{'scan':<40}{'length':>8}{'forward':>10}{'backward':>10}{'total':>10}")
    for name, L, f, b in rows:
        print(f'{name:<40}{L:>8}{f:>10.3f}{b:>10.3f}{f + b:>10.3f}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
