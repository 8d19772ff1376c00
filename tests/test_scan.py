"""The selective scan and causal convolution of every CPU backend against mamba-ssm's reference formula and against
the stored-states scan they replaced (bench/baseline_scan.py): outputs and every gradient in float64, at lengths
around the chunk length, primes and a window's 960 and 1000 steps; under bf16/fp16 autocast; and the memory claim
(no `(L, batch, d_state, d_inner)` tensor is kept for the backward).

The Triton kernels (the CUDA backend without mamba-ssm) run here in Triton's interpreter on CPU tensors (compiled,
on CUDA tensors, where a GPU is): the same equalities at float32 tolerances, with blocks shrunk so that small inputs
run in several programs and channel blocks; skipped only where triton is not installed."""
import subprocess, sys
from types import SimpleNamespace
from pathlib import Path
import pytest
import torch
import torch.nn.functional as F

from brain_go_brrr import triton_kernels
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


# --- the Triton kernels
needs_triton = pytest.mark.skipif(not triton_kernels.triton_available(),
                                  reason='triton is not installed (it is in requirements-test.lock, the test environment)')
TRITON_DEVICE = 'cpu' if triton_kernels.interpreted() else 'cuda'


@pytest.fixture
def small_blocks(monkeypatch):
    "Blocks of 4 channels and 16 time steps: 5 channels are two blocks (one partial), 64 steps four."
    monkeypatch.setattr(triton_kernels, 'BLOCK_D', 4)
    monkeypatch.setattr(triton_kernels, 'BLOCK_T', 16)


def triton_scan(**t):
    "`selective_scan` on the Triton backend, on the device its kernels run on here; the result back on the CPU."
    on_device = {k: v.to(TRITON_DEVICE) for k, v in t.items()}
    return selective_scan(**on_device, delta_softplus=True, backend='triton').cpu()


def wide_reference(**t):
    "The published formula in float64 on the same (rounded) values."
    return reference(**{k: v.double() for k, v in t.items()})


@needs_triton
@pytest.mark.parametrize('L', LENGTHS)
def test_triton_scan_equals_the_reference_formula(L, small_blocks):
    """float32 against the formula in float64: two lanes, two channel blocks (four programs) up to 33 steps; beyond,
    one program, which the interpreter's speed asks for (a program's loop is the same code at every length)."""
    shape = dict(batch=2, d=5) if L <= CHUNK + 1 else dict(batch=1, d=4)
    worst = differences(triton_scan, wide_reference, scan_inputs(L, **shape, dtype=torch.float32))
    assert max(worst.values()) < 2e-5, worst


@needs_triton
def test_triton_scan_in_float64_is_the_formula_to_rounding(small_blocks):
    "In float64 the kernels compute what the formula does to its last digits: the algorithm, not only its tolerance."
    worst = differences(triton_scan, reference, scan_inputs(CHUNK + 9, batch=2, d=5))
    assert max(worst.values()) < 1e-12, worst


@needs_triton
def test_triton_scan_without_the_optional_terms(small_blocks):
    inputs = scan_inputs(CHUNK + 3, batch=2, d=5, dtype=torch.float32, optional=False)
    with torch.no_grad(): inputs['delta'].abs_()         # no softplus: keep delta >= 0 so the reference stays finite
    scan = lambda **t: selective_scan(**{k: v.to(TRITON_DEVICE) for k, v in t.items()}, backend='triton').cpu()
    worst = differences(scan, lambda **t: reference(**{k: v.double() for k, v in t.items()}, delta_softplus=False),
                        inputs)
    assert max(worst.values()) < 2e-5, worst


@needs_triton
@pytest.mark.parametrize('dtype, tolerance', [(torch.bfloat16, 1e-2), (torch.float16, 2e-3)])
def test_triton_scan_of_half_precision_inputs(dtype, tolerance, small_blocks):
    """delta, B, C, z in half precision, as autocast's projections give them: scanned in float32, so the output is the
    formula's on those values to float32 rounding; their gradients come back in their dtype (rounded to it)."""
    t = scan_inputs(CHUNK + 9, batch=2, d=5, dtype=torch.float32)
    halves = {k: v.detach().to(dtype).requires_grad_() if k in ('delta', 'B', 'C', 'z') else v for k, v in t.items()}
    with torch.autocast(TRITON_DEVICE, dtype=dtype):
        y = triton_scan(**halves)
    assert y.dtype == torch.float32
    worst = differences(triton_scan, wide_reference, halves)
    assert worst['output'] < 2e-5 and max(worst.values()) < tolerance, worst


@needs_triton
@pytest.mark.parametrize('L', [1, 5, 64])
def test_triton_conv_equals_pytorch_with_gradients(L, small_blocks):
    "Against the PyTorch path in float64, on a strided view as in Mamba: four time blocks and two channel blocks at 64."
    g = torch.Generator().manual_seed(L)
    x = torch.randn(L, 3, 16, generator=g, dtype=torch.float64)[..., :6].requires_grad_()
    w, b = (torch.randn(*s, generator=g, dtype=torch.float64, requires_grad=True) for s in ((6, 4), (6,)))
    on_device = lambda *t: [v.to(TRITON_DEVICE) for v in t]
    ys = [causal_conv_silu(*on_device(x, w, b), 'triton').cpu(), causal_conv_silu(x, w, b, 'pytorch')]
    cot = torch.randn_like(ys[0])
    grads = [torch.autograd.grad(y, (x, w, b), cot) for y in ys]
    assert torch.allclose(ys[0], ys[1], rtol=0, atol=1e-12)
    for a, c in zip(*grads): assert torch.allclose(a, c, rtol=0, atol=1e-12)


@needs_triton
def test_mamba_block_on_triton_is_the_block_on_the_cpu_kernel(monkeypatch):
    "The whole block (the convolution and the scan, on views of in_proj's output) in float64, forward and backward."
    torch.manual_seed(0)
    block, x = Mamba(8, d_state=4).double(), torch.randn(2, CHUNK + 5, 8, dtype=torch.float64)
    outs = {}
    for backend, device in (('triton', TRITON_DEVICE), ('cpu-kernel', 'cpu')):
        monkeypatch.setattr('brain_go_brrr.ssm.scan_backend', lambda t, b=backend: b)
        block.to(device).zero_grad()
        y = block(x.to(device))
        y.square().sum().backward()
        outs[backend] = [y.detach().cpu()] + [p.grad.cpu() for p in block.parameters()]
    for a, b in zip(*outs.values()): assert torch.allclose(a, b, rtol=0, atol=1e-10 * b.abs().max().item())


COMPILE_FOR_SM90 = """
import os
os.environ['TRITON_INTERPRET'] = '0'                   # compile, whatever this machine has
import triton, triton.language as tl
from triton.backends.compiler import GPUTarget
from brain_go_brrr import triton_kernels as tk
scan = dict(HAS_Z=True, SOFTPLUS=True, CHUNK=32, BLOCK_D=tk.BLOCK_D, BLOCK_N=16)
conv = dict(K=4, ACC=tl.float32, BLOCK_T=tk.BLOCK_T, BLOCK_D=tk.BLOCK_D)
for kernel, constants, warps in ((tk._scan_forward, scan, tk.NUM_WARPS), (tk._scan_backward, scan, tk.NUM_WARPS),
                                 (tk._conv_forward, conv, 4), (tk._conv_backward, conv, 4)):
    integer = lambda name: name in ('L', 'lanes', 'D', 'N') or name.startswith('s') and name[-2:] in ('_t', '_b')
    signature = {a: 'constexpr' if a in constants else 'i32' if integer(a) else '*fp32' for a in kernel.arg_names}
    source = triton.compiler.ASTSource(fn=kernel, signature=signature, constexprs=constants)
    assert triton.compile(source, target=GPUTarget('cuda', 90, 32), options=dict(num_warps=warps)).asm['cubin']
print('compiled')
"""


@needs_triton
def test_the_triton_kernels_compile_for_a_gpu():
    """The interpreter runs the kernels as Python; Triton's compiler (its frontend, LLVM and the bundled ptxas) needs
    no GPU, so the training configuration is compiled to an sm_90 (H100/H200) cubin here, as on a GPU's first step."""
    run = subprocess.run([sys.executable, '-c', COMPILE_FOR_SM90], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0 and 'compiled' in run.stdout, run.stderr[-3000:]


def cuda_like():
    "What `scan_backend` reads of a CUDA tensor, on a machine without one."
    return SimpleNamespace(is_cuda=True, device=torch.device('cuda'))


def test_cuda_without_mamba_ssm_scans_in_triton(monkeypatch):
    "mamba-ssm first, Triton next, the PyTorch scan when neither or when SEIZURE_MAMBA_FORCE_FALLBACK=1."
    monkeypatch.setattr('brain_go_brrr.ssm._cuda_selective_scan', None)
    monkeypatch.setattr('brain_go_brrr.ssm.triton_available', lambda: True)
    monkeypatch.delenv('SEIZURE_MAMBA_FORCE_FALLBACK', raising=False)
    assert scan_backend(cuda_like()) == 'triton'
    monkeypatch.setenv('SEIZURE_MAMBA_FORCE_FALLBACK', '1')
    assert scan_backend(cuda_like()) == 'pytorch'
    monkeypatch.delenv('SEIZURE_MAMBA_FORCE_FALLBACK')
    monkeypatch.setattr('brain_go_brrr.ssm._cuda_selective_scan', lambda *a, **k: None)
    assert scan_backend(cuda_like()) == 'cuda-kernel'
    monkeypatch.setattr('brain_go_brrr.ssm._cuda_selective_scan', None)
    monkeypatch.setattr('brain_go_brrr.ssm.triton_available', lambda: False)
    assert scan_backend(cuda_like()) == 'pytorch'
    assert scan_backend(torch.zeros(1)) == 'cpu-kernel'


def test_the_package_imports_without_triton():
    "The main job's environment has no triton: the module imports, says so, and CUDA falls back to the PyTorch scan."
    code = ("import sys; sys.modules['triton'] = None\n"   # `import triton` raises ImportError
            "from types import SimpleNamespace; import torch\n"
            "from brain_go_brrr import ssm, triton_kernels\n"
            "assert not triton_kernels.triton_available()\n"
            "ssm._cuda_selective_scan = None\n"
            "print(ssm.scan_backend(SimpleNamespace(is_cuda=True, device=torch.device('cuda'))))")
    run = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.strip() == 'pytorch', run.stderr
