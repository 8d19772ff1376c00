"""The selective scan and causal convolution of every CPU backend against mamba-ssm's reference formula and against
the stored-states scan they replaced (bench/baseline_scan.py): outputs and every gradient in float64, at lengths
around the chunk length, primes and a window's 960 and 1000 steps; under bf16/fp16 autocast; and the memory claim
(no `(L, batch, d_state, d_inner)` tensor is kept for the backward)."""
import sys
from pathlib import Path
import pytest
import torch
import torch.nn.functional as F

from brain_go_brrr.cpu_kernels import CHUNK, cpu_kernels
from brain_go_brrr.ssm import BiMamba, Mamba, causal_conv_silu, scan_backend, selective_scan, selective_scan_reference

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'bench'))
from baseline_scan import baseline_selective_scan  # noqa: E402

BACKENDS = ['pytorch', 'cpu-kernel']
LENGTHS = [1, 2, 3, 5, 7, 31, 32, 33, 97, 257, 960, 1000]
NAMES = ['u', 'delta', 'A', 'B', 'C', 'D', 'z', 'delta_bias']


def test_the_kernels_build_here():
    "CI's machine has a compiler: a kernel that silently failed to build would leave only the slow path tested."
    assert cpu_kernels() is not None and scan_backend(torch.zeros(1)) == 'cpu-kernel'


def scan_inputs(L, batch=3, d=5, n=4, seed=0, dtype=torch.float64, optional=True):
    "Time-first inputs as leaves that require grad; softplus(delta_raw + bias) keeps delta positive like a trained block."
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)
    t = dict(u=r(L, batch, d), delta=r(L, batch, d), A=-torch.rand(d, n, generator=g, dtype=dtype) * 4 - 0.1,
             B=r(L, batch, n), C=r(L, batch, n), D=r(d), z=r(L, batch, d), delta_bias=r(d))
    if not optional: t = {k: t[k] for k in NAMES[:5]}
    return {k: v.requires_grad_() for k, v in t.items()}


def reference(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=True):
    bf = lambda t: None if t is None else t.permute(1, 2, 0)
    return selective_scan_reference(bf(u), bf(delta), A, bf(B), bf(C), D, bf(z), delta_bias, delta_softplus).permute(2, 0, 1)


def differences(f, g, inputs):
    "Output and gradient differences of `f` and `g`, each relative to the largest value of `g`'s."
    yf, yg = f(**inputs), g(**inputs)
    cot = torch.randn(yf.shape, generator=torch.Generator().manual_seed(1), dtype=yf.dtype)
    gf, gg = (torch.autograd.grad(y, list(inputs.values()), cot) for y in (yf, yg))
    out = {'output': ((yf - yg).abs().max() / yg.abs().max()).item()}
    return out | {k: ((a - b).abs().max() / b.abs().max()).item() for k, a, b in zip(inputs, gf, gg)}


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('L', LENGTHS)
def test_scan_equals_the_reference_formula_in_float64(backend, L):
    scan = lambda **t: selective_scan(**t, delta_softplus=True, backend=backend)
    worst = differences(scan, reference, scan_inputs(L))
    assert max(worst.values()) < 1e-12, worst


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('L', [1, CHUNK + 1, 960])
def test_scan_equals_the_stored_states_scan_it_replaced(backend, L):
    scan = lambda **t: selective_scan(**t, delta_softplus=True, backend=backend)
    worst = differences(scan, lambda **t: baseline_selective_scan(**t, delta_softplus=True), scan_inputs(L, seed=L))
    assert max(worst.values()) < 1e-12, worst


@pytest.mark.parametrize('backend', BACKENDS)
def test_scan_without_the_optional_terms(backend):
    inputs = scan_inputs(50, optional=False)
    with torch.no_grad(): inputs['delta'].abs_()         # no softplus: keep delta >= 0 so the reference stays finite
    scan = lambda **t: selective_scan(**t, backend=backend)
    worst = differences(scan, lambda **t: reference(**t, delta_softplus=False), inputs)
    assert max(worst.values()) < 1e-12, worst


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_scan_under_autocast_computes_in_float32(backend, dtype):
    "Half-precision inputs (as autocast's projections give them) are scanned in float32: same result as float32 inputs."
    t = {k: v.detach() for k, v in scan_inputs(200, dtype=torch.float32).items()}
    halves = {k: v.to(dtype) if k in ('delta', 'B', 'C', 'z') else v for k, v in t.items()}
    with torch.autocast('cpu', dtype=dtype):
        y = selective_scan(**halves, delta_softplus=True, backend=backend)
    expected = selective_scan(**{k: v.float() for k, v in halves.items()}, delta_softplus=True, backend=backend)
    assert y.dtype == torch.float32 and torch.equal(y, expected)


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_mamba_stack_trains_finite_under_autocast(dtype):
    torch.manual_seed(0)
    net, x = BiMamba(16, 2, 8, checkpointing=True), torch.randn(2, 300, 16, requires_grad=True)
    with torch.autocast('cpu', dtype=dtype):
        y = net(x)
    y.float().square().mean().backward()
    assert torch.isfinite(y).all() and all(torch.isfinite(p.grad).all() for p in net.parameters())


@pytest.mark.parametrize('L', [1, 2, 5, 64])
def test_causal_conv_kernel_equals_pytorch_with_gradients(L):
    g = torch.Generator().manual_seed(L)
    x = torch.randn(L, 3, 16, generator=g, dtype=torch.float64)[..., :6].requires_grad_()  # a strided view, as in Mamba
    w, b = (torch.randn(*s, generator=g, dtype=torch.float64, requires_grad=True) for s in ((6, 4), (6,)))
    conv = lambda backend: causal_conv_silu(x, w, b, backend)
    ys = [conv(backend) for backend in BACKENDS]
    cot = torch.randn_like(ys[0])
    grads = [torch.autograd.grad(y, (x, w, b), cot) for y in ys]
    assert torch.allclose(ys[0], ys[1], rtol=0, atol=1e-12)
    for a, c in zip(*grads): assert torch.allclose(a, c, rtol=0, atol=1e-12)


@pytest.mark.parametrize('backend', BACKENDS)
def test_the_backward_keeps_no_full_length_state(backend):
    "What the scan saves for the backward is its inputs and O(L / CHUNK) states; the baseline saved two full-length ones."
    L, batch, d, n = 960, 19, 64, 16
    t = {k: v.float() for k, v in scan_inputs(L, batch, d, n).items()}
    full_length_state = L * batch * d * n
    saved = lambda y: sum({s.untyped_storage().data_ptr(): s.numel() for s in saved_tensors(y.grad_fn)}.values())
    assert saved(selective_scan(**t, delta_softplus=True, backend=backend)) < full_length_state / 2
    assert saved(baseline_selective_scan(**t, delta_softplus=True)) > 2 * full_length_state


def saved_tensors(fn, seen=None):
    "Every tensor the autograd graph below `fn` holds for the backward."
    seen = set() if seen is None else seen
    if fn is None or fn in seen: return []
    seen.add(fn)
    own = list(getattr(fn, 'saved_tensors', ())) + [v for k in dir(fn) if k.startswith('_saved_')
                                                     for v in [getattr(fn, k)] if isinstance(v, torch.Tensor)]
    return own + [t for nxt, _ in fn.next_functions for t in saved_tensors(nxt, seen)]


def test_mamba_block_is_the_same_function_on_both_backends(monkeypatch):
    torch.manual_seed(0)
    block, x = Mamba(16, d_state=8).double(), torch.randn(2, 70, 16, dtype=torch.float64)
    outs = {}
    for backend in BACKENDS:
        monkeypatch.setattr('brain_go_brrr.ssm.scan_backend', lambda t, b=backend: b)
        block.zero_grad()
        y = block(x)
        y.square().sum().backward()
        outs[backend] = [y.detach()] + [p.grad.clone() for p in block.parameters()]
    for a, b in zip(*outs.values()): assert torch.allclose(a, b, rtol=0, atol=1e-10 * b.abs().max().item())
