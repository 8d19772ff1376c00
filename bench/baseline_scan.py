"""The selective scan this project used up to commit 991d20d, kept as the benchmarks' baseline.

It stores every state h[t] and every exp(delta[t] A) as `(L, batch, d_state, d_inner)` tensors for the
backward pass (about 0.3 GB per Mamba block per 60-s window) and scans them in two levels of about
sqrt(L) vectorised steps. `brain_go_brrr.ssm` replaced it with scans that keep a state every CHUNK steps
and recompute inside a chunk. `use_baseline_scan()` swaps it into `brain_go_brrr.ssm.Mamba`, so the same
detector can be measured with either; tests/test_scan.py checks the two compute the same function.
"""
import math
import torch
import torch.nn.functional as F
from brain_go_brrr import ssm


def scan_chunking(L: int) -> tuple[int, int]:
    "Chunk length (about sqrt(L)) and chunk count; the scan runs on `length * count >= L` rows."
    T = max(1, math.isqrt(L))
    return T, -(-L // T)


def padded_length(L: int) -> int:
    "Rows the scan buffers need for a sequence of length `L`."
    T, n = scan_chunking(L)
    return T * n


def linear_scan_(a: torch.Tensor, b: torch.Tensor, reverse: bool = False) -> torch.Tensor:
    "In place `b <- h`, `h[t] = a[t] * h[t-1] + b[t]` (`reverse`: `h[t+1]`), zero state outside; `(padded_length(L), M)` rows."
    L, M = b.shape
    T, n = scan_chunking(L)
    a3, b3 = a.view(n, T, M), b.view(n, T, M)
    steps = range(T - 1, -1, -1) if reverse else range(T)
    state, spare, decay = torch.zeros_like(b3[:, 0]), torch.empty_like(b3[:, 0]), torch.ones_like(a3[:, 0])
    for t in steps:                                   # each chunk's end state from zero, and its decay
        torch.addcmul(b3[:, t], a3[:, t], state, out=spare)
        state, spare = spare, state
        decay.mul_(a3[:, t])
    carry = torch.zeros_like(state)                   # state entering each chunk
    for c in (range(n - 2, -1, -1) if reverse else range(1, n)):
        src = c + 1 if reverse else c - 1
        torch.addcmul(state[src], decay[src], carry[src], out=carry[c])
    prev = carry
    for t in steps:                                   # each chunk again, from its carry
        b3[:, t].addcmul_(a3[:, t], prev)
        prev = b3[:, t]
    return b


def _decays(delta, A_t, rows):
    "exp(delta A) as `(rows, batch, d_state, d_inner)`; rows past `len(delta)` are 0, so the scan forgets there."
    L = delta.shape[0]
    out = delta.new_empty(rows, delta.shape[1], *A_t.shape)
    torch.mul(delta[:, :, None, :], A_t, out=out[:L]).exp_()
    out[L:] = 0
    return out


def _outer(x, B, rows, first=0):
    "`B[t] x[t]^T` as `(rows, batch, d_state, d_inner)` from row `first` on, zero elsewhere."
    L = x.shape[0]
    out = x.new_empty(rows, x.shape[1], B.shape[-1], x.shape[-1])
    torch.mul(B[..., None], x[:, :, None, :], out=out[first:first + L])
    out[:first] = 0
    out[first + L:] = 0
    return out


class StoredStatesScan(torch.autograd.Function):
    "`y[t] = C[t] . h[t]`, `h[t] = exp(delta[t] A) h[t-1] + delta[t] u[t] B[t]`, time-first, all states stored."
    @staticmethod
    def forward(ctx, delta, u, A, B, C):
        (L, batch, d), n = delta.shape, A.shape[1]
        rows = padded_length(L)
        states = _outer(delta * u, B, rows + 1, first=1)       # row 0 is h[-1] = 0, so states[:L] is h[t-1]
        decays = _decays(delta, A.t().contiguous(), rows + 1)  # the extra zero row ends the backward scan
        linear_scan_(decays[:rows].view(rows, -1), states[1:].view(rows, -1))
        ctx.save_for_backward(delta, u, A, B, C, states, decays)
        return (C.reshape(L * batch, 1, n) @ states[1:L + 1].view(L * batch, n, d)).view(L, batch, d)

    @staticmethod
    def backward(ctx, gy):
        delta, u, A, B, C, states, decays = ctx.saved_tensors
        (L, batch, d), n = delta.shape, A.shape[1]
        rows, flat = padded_length(L), lambda t: t.reshape(L * batch, *t.shape[2:])
        lam = _outer(gy, C, rows)                               # C[t] g[t]^T, then the adjoint state
        linear_scan_(decays[1:].view(rows, -1), lam.view(rows, -1), reverse=True)
        lam, h = lam[:L], states[1:L + 1]
        lam_B = (flat(B)[:, None] @ flat(lam)).view(L, batch, d)
        grad_B = (flat(lam) @ flat(delta * u)[..., None]).view(L, batch, n)
        grad_C = (flat(h) @ flat(gy)[..., None]).view(L, batch, n)
        decayed = lam.mul_(decays[:L]).mul_(states[:L])         # lambda[t] exp(delta[t] A) h[t-1], over lambda
        grad_delta = u * lam_B + (decayed * A.t()).sum(2)
        grad_A = decayed.mul_(delta[:, :, None, :]).sum((0, 1)).t()
        return grad_delta, delta * lam_B, grad_A, grad_B, grad_C


def baseline_selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    "The baseline with `selective_scan`'s arguments, as the old `Mamba.forward` composed it."
    with ssm.autocast_off(u):
        u, delta, A, B, C = map(ssm.wide, (u, delta, A, B, C))
        if delta_bias is not None: delta = delta + ssm.wide(delta_bias)
        if delta_softplus: delta = F.softplus(delta)
        y = StoredStatesScan.apply(delta, u, A, B, C)
        if D is not None: y = y + u * ssm.wide(D)
        return y if z is None else y * F.silu(ssm.wide(z))


def baseline_forward(self, x: torch.Tensor) -> torch.Tensor:
    "`Mamba.forward` as it was at 991d20d: shifted multiply-add convolution, then the stored-states scan."
    xz = self.in_proj(x.transpose(0, 1))
    u, z = xz.chunk(2, dim=-1)
    u = ssm.causal_conv_silu(u, self.conv1d.weight[:, 0], self.conv1d.bias, backend='pytorch')
    dt, B, C = self.x_proj(u).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
    y = baseline_selective_scan(u, dt @ self.dt_proj.weight.t(), -torch.exp(ssm.wide(self.A_log)), B, C, self.D, z,
                                self.dt_proj.bias, delta_softplus=True)
    return self.out_proj(y.to(xz.dtype)).transpose(0, 1)


def use_baseline_scan():
    "Make every `brain_go_brrr.ssm.Mamba` (existing and new) run the baseline, and no activation checkpointing."
    ssm.Mamba.forward = baseline_forward
    ssm.BiMamba.forward = torch.nn.Sequential.forward
