"""The contract of `Mamba._cuda_scan` with mamba-ssm's CUDA selective scan, checked on the CPU.

No GPU is needed: `brain_go_brrr.ssm._cuda_selective_scan` is replaced by `fake_selective_scan_fn`, which does
what mamba-ssm's Python wrapper does to its arguments, then asserts every check the C++ op makes before launching
the kernel, then computes `selective_scan_reference` (the formula of mamba-ssm's `selective_scan_ref`).

Where the checks come from (github.com/state-spaces/mamba, read at commit e9594ce1c732):

mamba_ssm/ops/selective_scan_interface.py, `SelectiveScanFn.forward`, before `selective_scan_cuda.fwd(...)`:
    if u.stride(-1) != 1: u = u.contiguous()
    if delta.stride(-1) != 1: delta = delta.contiguous()
    if D is not None: D = D.contiguous()
    if B.stride(-1) != 1: B = B.contiguous()
    if C.stride(-1) != 1: C = C.contiguous()
    if z is not None and z.stride(-1) != 1: z = z.contiguous()
    if B.dim() == 3: B = rearrange(B, "b dstate l -> b 1 dstate l")
    if C.dim() == 3: C = rearrange(C, "b dstate l -> b 1 dstate l")
  (no dtype casts, and no custom_fwd/autocast handling: tensors reach the op in the dtypes the caller gave.)

csrc/selective_scan/selective_scan.cpp, `selective_scan_fwd`:
    auto input_type = u.scalar_type();  auto weight_type = A.scalar_type();
    TORCH_CHECK(input_type == Float || input_type == Half || input_type == BFloat16);
    TORCH_CHECK(weight_type == Float || weight_type == ComplexFloat);
    const bool is_variable_B = B.dim() >= 3;  const bool is_variable_C = C.dim() >= 3;
    TORCH_CHECK(delta.scalar_type() == input_type);
    TORCH_CHECK(B.scalar_type() == (!is_variable_B ? weight_type : input_type));
    TORCH_CHECK(C.scalar_type() == (!is_variable_C ? weight_type : input_type));
    TORCH_CHECK(u.is_cuda()); ... (delta, A, B, C, D, delta_bias, z)      [not checkable on the CPU: not modelled]
    TORCH_CHECK(u.stride(-1) == 1 || u.size(-1) == 1);
    TORCH_CHECK(delta.stride(-1) == 1 || delta.size(-1) == 1);
    batch_size, dim, seqlen = u.sizes();  dstate = A.size(1);  n_groups = is_variable_B ? B.size(1) : 1;
    TORCH_CHECK(dstate <= 256, "selective_scan only supports state dimension <= 256");
    CHECK_SHAPE(u, batch_size, dim, seqlen);  CHECK_SHAPE(delta, batch_size, dim, seqlen);  CHECK_SHAPE(A, dim, dstate);
    B: !is_variable_B ? CHECK_SHAPE(B, dim, dstate)
                      : CHECK_SHAPE(B, batch_size, n_groups, dstate, !is_complex ? seqlen : seqlen * 2);
                        TORCH_CHECK(B.stride(-1) == 1 || B.size(-1) == 1);
    C: the same as B.
    D (if given):          TORCH_CHECK(D.scalar_type() == Float); TORCH_CHECK(D.stride(-1) == 1 || D.size(-1) == 1);
                           CHECK_SHAPE(D, dim);
    delta_bias (if given): TORCH_CHECK(delta_bias.scalar_type() == Float);
                           TORCH_CHECK(delta_bias.stride(-1) == 1 || delta_bias.size(-1) == 1); CHECK_SHAPE(delta_bias, dim);
    z (if given):          TORCH_CHECK(z.scalar_type() == input_type); TORCH_CHECK(z.stride(-1) == 1 || z.size(-1) == 1);
                           CHECK_SHAPE(z, batch_size, dim, seqlen);
    at::Tensor out = torch::empty_like(delta);  out_z = torch::empty_like(z);   -> the output is in input_type
csrc/selective_scan/selective_scan.cpp, `selective_scan_bwd`, additionally (the gradient of that output):
    TORCH_CHECK(dout.scalar_type() == input_type);  CHECK_SHAPE(dout, batch_size, dim, seqlen);
"""
import pytest
import torch
import torch.nn.functional as F

import brain_go_brrr.ssm as ssm
from brain_go_brrr.ssm import Mamba, selective_scan_reference

INPUT_TYPES = (torch.float32, torch.float16, torch.bfloat16)   # DISPATCH_ITYPE_FLOAT_AND_HALF_AND_BF16
WEIGHT_TYPES = (torch.float32, torch.complex64)                # DISPATCH_WTYPE_FLOAT_AND_COMPLEX
FLOAT = (torch.float32,)                                       # D and delta_bias: at::ScalarType::Float


def _check(cond, name, detail):
    assert cond, f'selective_scan_fwd check failed: {name} ({detail})'


def _last_dim_ok(name, t):
    _check(t.stride(-1) == 1 or t.size(-1) == 1, f'{name}.stride(-1) == 1 || {name}.size(-1) == 1',
           f'stride {tuple(t.stride())}')


def _shape_ok(name, t, *shape):
    _check(tuple(t.shape) == shape, f'CHECK_SHAPE({name}, ...)', f'{name} has shape {tuple(t.shape)}, kernel wants {shape}')


def check_selective_scan_fwd(u, delta, A, B, C, D=None, z=None, delta_bias=None, float64_ok=False):
    """The TORCH_CHECKs of `selective_scan_fwd` (all but `is_cuda`), on the arguments as the wrapper hands them over.
    `float64_ok`: also let float64 stand for Float, for exact comparisons only; the real kernel has no float64."""
    input_type, weight_type = u.dtype, A.dtype
    f64 = (torch.float64,) if float64_ok else ()
    _check(input_type in INPUT_TYPES + f64, 'input_type in {Float, Half, BFloat16}', f'u is {input_type}')
    _check(weight_type in WEIGHT_TYPES + f64, 'weight_type in {Float, ComplexFloat}', f'A is {weight_type}')
    is_variable_B, is_variable_C, is_complex = B.dim() >= 3, C.dim() >= 3, weight_type == torch.complex64
    _check(delta.dtype == input_type, 'delta.scalar_type() == input_type', f'delta is {delta.dtype}, u is {input_type}')
    for name, t, variable in (('B', B, is_variable_B), ('C', C, is_variable_C)):
        want = input_type if variable else weight_type
        _check(t.dtype == want, f'{name}.scalar_type() == (!is_variable_{name} ? weight_type : input_type)',
               f'{name} is {t.dtype}, kernel wants {want}')
    _last_dim_ok('u', u)
    _last_dim_ok('delta', delta)
    _check(u.dim() == 3, 'u.sizes() == (batch, dim, seqlen)', f'u has shape {tuple(u.shape)}')
    batch, dim, seqlen = u.shape
    dstate, n_groups = A.size(1), (B.size(1) if is_variable_B else 1)
    _check(dstate <= 256, 'dstate <= 256', f'dstate {dstate}')
    _shape_ok('u', u, batch, dim, seqlen)
    _shape_ok('delta', delta, batch, dim, seqlen)
    _shape_ok('A', A, dim, dstate)
    for name, t, variable in (('B', B, is_variable_B), ('C', C, is_variable_C)):
        if not variable: _shape_ok(name, t, dim, dstate)
        else:
            _shape_ok(name, t, batch, n_groups, dstate, seqlen * 2 if is_complex else seqlen)
            _last_dim_ok(name, t)
    if D is not None:
        _check(D.dtype in FLOAT + f64, 'D.scalar_type() == Float', f'D is {D.dtype}')
        _last_dim_ok('D', D)
        _shape_ok('D', D, dim)
    if delta_bias is not None:
        _check(delta_bias.dtype in FLOAT + f64, 'delta_bias.scalar_type() == Float', f'delta_bias is {delta_bias.dtype}')
        _last_dim_ok('delta_bias', delta_bias)
        _shape_ok('delta_bias', delta_bias, dim)
    if z is not None:
        _check(z.dtype == input_type, 'z.scalar_type() == input_type', f'z is {z.dtype}, u is {input_type}')
        _last_dim_ok('z', z)
        _shape_ok('z', z, batch, dim, seqlen)


def _no_autocast(t):
    "The kernel ignores autocast: it computes in its own precision, so the stand-in's formula does too."
    return torch.autocast(t.device.type, enabled=False)


def _reference(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    """`selective_scan_reference`, with B, C and z first widened as the kernel does (it loads input_t, computes in float;
    mamba-ssm's `selective_scan_ref` has `B = B.float(); C = C.float()`, which the package's copy leaves out)."""
    wide = lambda t: None if t is None else t.to(torch.promote_types(u.dtype, torch.float32))
    return selective_scan_reference(u, delta, A, wide(B), wide(C), D, wide(z), delta_bias, delta_softplus)


class _StandInScan(torch.autograd.Function):
    "Forward: `selective_scan_reference` on checked arguments; backward: its gradient, after `selective_scan_bwd`'s dout check."
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias)
        ctx.delta_softplus = delta_softplus
        with _no_autocast(u):
            return _reference(u, delta, A, B, C, D, z, delta_bias, delta_softplus)

    @staticmethod
    def backward(ctx, dout):
        u, delta, A, B, C, D, z, delta_bias = ctx.saved_tensors
        _check(dout.dtype == u.dtype, 'dout.scalar_type() == input_type (selective_scan_bwd)', f'dout is {dout.dtype}')
        _shape_ok('dout', dout, *u.shape)
        args = [None if t is None else t.detach().requires_grad_() for t in (u, delta, A, B, C, D, z, delta_bias)]
        with torch.enable_grad(), _no_autocast(u):
            out = _reference(*args, ctx.delta_softplus)
        leaves = [t for t in args if t is not None]
        grads = iter(torch.autograd.grad(out, leaves, dout, allow_unused=True))
        return (*(None if t is None else next(grads) for t in args), None)


def fake_selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                           return_last_state=False, *, float64_ok=False):
    "Stand-in for `mamba_ssm.ops.selective_scan_interface.selective_scan_fn`: the wrapper's fix-ups, the kernel's checks, the reference formula."
    assert not return_last_state, 'the stand-in does not model return_last_state (Mamba does not use it)'
    # SelectiveScanFn.forward's fix-ups
    u, delta, B, C, z = (t if t is None or t.stride(-1) == 1 else t.contiguous() for t in (u, delta, B, C, z))
    D = None if D is None else D.contiguous()
    B4 = B.unsqueeze(1) if B.dim() == 3 else B                  # rearrange "b dstate l -> b 1 dstate l"
    C4 = C.unsqueeze(1) if C.dim() == 3 else C
    check_selective_scan_fwd(u, delta, A, B4, C4, D, z, delta_bias, float64_ok=float64_ok)
    # selective_scan_reference takes time-varying B, C as (batch, dstate, L) only: one group
    assert B4.dim() == C4.dim() == 4 and B4.size(1) == C4.size(1) == 1, 'the stand-in models n_groups == 1 only'
    return _StandInScan.apply(u, delta, A, B4[:, 0], C4[:, 0], D, z, delta_bias, delta_softplus)


def _route_to_stand_in(monkeypatch, float64_ok=False):
    "Send the selective scan to the `cuda-kernel` backend with the stand-in as the kernel; returns the list of its calls."
    calls = []
    def recording(u, delta, A, B, C, D=None, z=None, delta_bias=None, **kw):
        calls.append({k: None if t is None else (t.dtype, tuple(t.shape))
                      for k, t in dict(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias).items()})
        return fake_selective_scan_fn(u, delta, A, B, C, D, z=z, delta_bias=delta_bias, float64_ok=float64_ok, **kw)
    monkeypatch.setattr(ssm, '_cuda_selective_scan', recording)
    monkeypatch.setattr(ssm, 'uses_cuda_kernels', lambda x: True)
    return calls


@pytest.fixture
def kernel_path(monkeypatch):
    "The stand-in kernel, with every check of the real one."
    return _route_to_stand_in(monkeypatch)


@pytest.fixture
def kernel_path_float64_ok(monkeypatch):
    "The stand-in kernel, letting float64 stand for float32: only to compare the two paths' formulas exactly."
    return _route_to_stand_in(monkeypatch, float64_ok=True)


def _block_and_input(dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    block = Mamba(d_model=16, d_state=8).to(dtype)
    with torch.no_grad(): block.D.uniform_(0.5, 1.5)             # not all ones, so a swapped or dropped D shows
    return block, torch.randn(2, 37, 16, dtype=dtype)


PRECISIONS = {'fp32': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}


@pytest.mark.parametrize('precision', PRECISIONS)
def test_cuda_scan_meets_the_kernel_contract(kernel_path, precision):
    block, x = _block_and_input()
    x.requires_grad_()
    amp = PRECISIONS[precision]
    with torch.autocast('cpu', dtype=amp or torch.bfloat16, enabled=amp is not None):
        y = block(x)                                             # raises here if an argument breaks a kernel check
        loss = y.float().square().mean()
    loss.backward()
    assert len(kernel_path) == 1
    call = kernel_path[0]
    batch, L, d_inner, d_state = 2, 37, block.d_inner, block.d_state
    assert call['u'][1] == call['delta'][1] == call['z'][1] == (batch, d_inner, L)
    assert call['B'][1] == call['C'][1] == (batch, d_state, L)
    assert call['A'] == (torch.float32, (d_inner, d_state))
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert torch.isfinite(x.grad).all()
    for name, p in block.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def _both_paths(block, x, monkeypatch, kernel_path):
    "The block's output through `_cuda_scan` (stand-in kernel), then through the project's own scan."
    with torch.no_grad():
        via_kernel = block(x)
        monkeypatch.setattr(ssm, 'uses_cuda_kernels', lambda x: False)
        via_pytorch = block(x)
    assert len(kernel_path) == 1                                 # the first call went through the kernel, the second not
    return via_kernel, via_pytorch


def test_cuda_scan_equals_the_pytorch_scan_in_fp32(kernel_path, monkeypatch):
    block, x = _block_and_input(torch.float32)
    via_kernel, via_pytorch = _both_paths(block, x, monkeypatch, kernel_path)
    assert via_kernel.dtype == via_pytorch.dtype == torch.float32
    torch.testing.assert_close(via_kernel, via_pytorch, rtol=1e-5, atol=1e-5)


def test_cuda_scan_means_what_the_pytorch_scan_computes_in_fp64(kernel_path_float64_ok):
    """The arguments `_cuda_scan` hands over mean what the PyTorch scan computes, to float64 round-off. The real kernel
    has no float64 (a float64 block takes the PyTorch scan: next test), so the backend is named here."""
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
    L, batch, d, n = 37, 2, 6, 4
    args = (r(L, batch, d), r(L, batch, d), -torch.rand(d, n, generator=g, dtype=torch.float64), r(L, batch, n),
            r(L, batch, n), r(d), r(L, batch, d), r(d))
    via_kernel, via_pytorch = (ssm.selective_scan(*args, delta_softplus=True, backend=b) for b in ('cuda-kernel', 'pytorch'))
    assert kernel_path_float64_ok[0]['u'][0] == torch.float64
    torch.testing.assert_close(via_kernel, via_pytorch, rtol=0, atol=1e-10)


def test_a_float64_block_takes_the_pytorch_scan_where_the_kernel_would_refuse_it(kernel_path):
    block, x = _block_and_input(torch.float64)
    assert torch.isfinite(block(x)).all() and kernel_path == []


def test_stand_in_agrees_with_the_reference_in_fp64_both_ways():
    "The stand-in's forward and backward are the reference formula's exactly (no kernel dtype rules: called unchecked)."
    torch.manual_seed(1)
    b, d, n, L = 2, 6, 4, 11
    args = [torch.randn(b, d, L), torch.randn(b, d, L), -torch.rand(d, n) - 0.5, torch.randn(b, n, L),
            torch.randn(b, n, L), torch.randn(d), torch.randn(b, d, L), torch.randn(d)]
    args = [t.double().requires_grad_() for t in args]
    out = _StandInScan.apply(*args, True)
    want = selective_scan_reference(*args, True)
    torch.testing.assert_close(out, want, rtol=0, atol=1e-12)
    g = torch.randn_like(out)
    torch.testing.assert_close(torch.autograd.grad(out, args, g), torch.autograd.grad(want, args, g), rtol=0, atol=1e-12)


def _kernel_args(dtype=torch.float32, b=2, d=8, n=4, L=5):
    torch.manual_seed(2)
    u, delta, z = (torch.randn(b, d, L, dtype=dtype) for _ in range(3))
    B, C = (torch.randn(b, n, L, dtype=dtype) for _ in range(2))
    return dict(u=u, delta=delta, A=-torch.rand(d, n), B=B, C=C, D=torch.ones(d), z=z, delta_bias=torch.zeros(d))


@pytest.mark.parametrize('dtype', [torch.float32, torch.float16, torch.bfloat16])
def test_stand_in_accepts_consistent_arguments(dtype):
    a = _kernel_args(dtype)
    out = fake_selective_scan_fn(**a, delta_softplus=True)
    assert out.dtype == dtype and out.shape == a['u'].shape      # out = empty_like(delta): input_type


def test_stand_in_rejects_bf16_delta_with_fp32_u():
    a = _kernel_args(torch.float32)
    a['delta'] = a['delta'].bfloat16()
    with pytest.raises(AssertionError, match=r'delta\.scalar_type\(\) == input_type'):
        fake_selective_scan_fn(**a, delta_softplus=True)


@pytest.mark.parametrize('change, check', [
    (dict(u=lambda t: t.double(), delta=lambda t: t.double(), B=lambda t: t.double(), C=lambda t: t.double(),
          z=lambda t: t.double()), r'input_type in'),
    (dict(A=lambda t: t.double()), r'weight_type in'),
    (dict(B=lambda t: t.half()), r'B\.scalar_type\(\)'),
    (dict(C=lambda t: t.bfloat16()), r'C\.scalar_type\(\)'),
    (dict(z=lambda t: t.half()), r'z\.scalar_type\(\) == input_type'),
    (dict(D=lambda t: t.half()), r'D\.scalar_type\(\) == Float'),
    (dict(delta_bias=lambda t: t.bfloat16()), r'delta_bias\.scalar_type\(\) == Float'),
    (dict(delta=lambda t: t[:, :, :-1]), r'CHECK_SHAPE\(delta'),
    (dict(u=lambda t: t.transpose(1, 2), delta=lambda t: t.transpose(1, 2), z=lambda t: t.transpose(1, 2)),
     r'CHECK_SHAPE\(A'),                                                     # (batch, L, dim): channels-last is wrong
    (dict(z=lambda t: t[:, :, :-1]), r'CHECK_SHAPE\(z'),
    (dict(B=lambda t: t.transpose(1, 2).contiguous()), r'CHECK_SHAPE\(B'),    # (batch, L, dstate)
    (dict(A=lambda t: t.t()), r'CHECK_SHAPE\(A'),
    (dict(D=lambda t: t[:-1]), r'CHECK_SHAPE\(D'),
    (dict(delta_bias=lambda t: t[::2]), r'delta_bias\.stride\(-1\) == 1'),   # the wrapper does not fix delta_bias
])
def test_stand_in_rejects_what_the_kernel_rejects(change, check):
    a = _kernel_args()
    a.update({k: f(a[k]) for k, f in change.items()})
    with pytest.raises(AssertionError, match=check):
        fake_selective_scan_fn(**a, delta_softplus=True)


def test_stand_in_fixes_strides_as_the_wrapper_does():
    "A last-dim stride != 1 on u, delta, B, C, z is the wrapper's to fix, not an error."
    a = _kernel_args()
    strided = {k: a[k].transpose(-1, -2).contiguous().transpose(-1, -2) for k in ('u', 'delta', 'B', 'C', 'z')}
    assert all(t.stride(-1) != 1 for t in strided.values())
    torch.testing.assert_close(fake_selective_scan_fn(**(a | strided), delta_softplus=True),
                               fake_selective_scan_fn(**a, delta_softplus=True), rtol=0, atol=0)
