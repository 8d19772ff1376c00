"Detector tests that need more than a notebook cell: parameter files, numerical robustness, PE work and memory, checkpoints."
import collections, io, os, subprocess, sys
from pathlib import Path
import pytest
import torch
import torch.nn.functional as F

from brain_go_brrr.graph import (DenseSSGConv, EdgeStream, count_decompositions, dense_adjacency, gcn_normalized,
                                 pair_index, sparsify)
from brain_go_brrr import ssm
from brain_go_brrr.model import (REFERENCE_LAYOUT, Detector, DetectorConfig, LaunchCounter, detector_input,
                                 parameter_counts, step_launches, traced_shapes)
from brain_go_brrr.triton_kernels import interpreted
from brain_go_brrr.ssm import Mamba, uses_cuda_kernels

ROOT = Path(__file__).resolve().parents[1]
TINY = DetectorConfig(tcn_layers=3, tcn_base_channels=8, tcn_channels=16, tcn_downsample=8, d_node=8, node_layers=1,
                      node_d_state=4, edge_dim=4, edge_layers=1, edge_d_state=4, pe_k=4, semi_dynamic_interval=2, gnn_layers=2)
SUBPROCESS_ENV = os.environ | {'OMP_NUM_THREADS': '1'}


def test_cpu_smoke_runs_forward_and_backward_at_its_window():
    cfg, n_samples = detector_input(ROOT / 'params/cpu_smoke.yaml')
    model = Detector(cfg)
    logits = model(torch.randn(2, cfg.n_channels, n_samples))
    assert logits.shape == (2, n_samples)
    logits.mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_gpu_full_shapes_and_parameters_on_the_meta_device():
    cfg, n_samples = detector_input(ROOT / 'params/gpu_full.yaml')
    assert n_samples == 60 * 256 and cfg == DetectorConfig()
    with torch.device('meta'):
        model = Detector(cfg)
        shapes = dict(traced_shapes(model, torch.empty(2, 19, n_samples)))
    assert shapes['encoder'] == (2, 512, 960) and shapes['edge_stream'] == (2, 960, 19, 19)
    assert shapes['graph_stream'] == (2, 960, 19, 64) and shapes['logits'] == (2, n_samples)
    assert abs(parameter_counts(model)['total'] - 9.0e6) < 0.1e6


def test_model_summary_command():
    run = lambda *args: subprocess.run([sys.executable, '-m', 'brain_go_brrr', 'model-summary', *args],
                                       capture_output=True, text=True, cwd=ROOT, env=SUBPROCESS_ENV)
    ok = run('-f', 'params/gpu_full.yaml')
    assert ok.returncode == 0, ok.stderr
    assert '9,028,850' in ok.stdout and '(1, 15360)' in ok.stdout
    missing = run('-f', 'params/no_such_file.yaml')
    assert missing.returncode == 2 and 'no_such_file.yaml' in missing.stderr


def test_model_summary_names_the_field_and_fix(tmp_path):
    bad = tmp_path / 'bad.yaml'
    bad.write_text('window_s: 10\nsfreq: 250\nmodel:\n  tcn_downsample: 16\n')
    with pytest.raises(ValueError, match=r'bad.yaml.*2500 samples.*tcn_downsample=16.*change window_s or sfreq'):
        detector_input(bad)
    bad.write_text('model:\n  pe_k: 40\n')
    with pytest.raises(ValueError, match=r'bad.yaml.*pe_k=40'):
        detector_input(bad)


def _replace_adjacency(model, adjacency_of):
    "Make the edge stream return `adjacency_of(its output)`."
    return model.edge_stream.register_forward_hook(lambda m, i, out: adjacency_of(out))


CONDITIONS = {
    'random': dict(batch=4),
    'zero adjacency': dict(batch=4, adjacency=torch.zeros_like),
    'complete graph': dict(batch=4, adjacency=lambda a: (1 - torch.eye(a.shape[-1])).expand_as(a).clone()),
    'batch 1': dict(batch=1),
    'bf16 autocast': dict(batch=4, autocast=torch.bfloat16),
    'fp16 autocast': dict(batch=4, autocast=torch.float16),
}


def test_forward_and_backward_stay_finite_for_100_random_steps():
    "Six conditions in turn over 100 AdamW steps on random windows (amplitudes up to 30 sd) of a small detector."
    torch.manual_seed(0)
    model = Detector(TINY)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    names = list(CONDITIONS)
    for step in range(100):
        name = names[step % len(names)]
        c = CONDITIONS[name]
        hook = _replace_adjacency(model, c['adjacency']) if 'adjacency' in c else None
        x = torch.randn(c['batch'], 19, 256) * (30 if step % 7 == 0 else 1)
        y = (torch.rand(c['batch'], 256) < 0.3).float()
        with torch.autocast('cpu', dtype=c.get('autocast', torch.bfloat16), enabled='autocast' in c):
            logits = model(x)
        loss = F.binary_cross_entropy_with_logits(logits.float(), y)
        optimizer.zero_grad()
        loss.backward()
        if hook: hook.remove()
        assert torch.isfinite(logits).all() and torch.isfinite(loss), (step, name)
        bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
        assert not bad, (step, name, bad)
        optimizer.step()


@pytest.mark.parametrize('interval,dynamic,expected', [(1, True, 3 * 64), (4, True, 3 * 16), (5, True, 3 * 13), (4, False, 3)])
def test_detector_decomposes_only_the_graphs_it_uses(interval, dynamic, expected):
    "Forward at 512 samples / 8 = 64 time steps: B * ceil(64 / interval) decompositions, or B for the static encoding."
    model = Detector(TINY.model_copy(update=dict(semi_dynamic_interval=interval, use_dynamic_pe=dynamic)))
    with torch.no_grad():
        assert count_decompositions(lambda: model(torch.randn(3, 19, 512))) == expected


PE_MEMORY = """
import re, sys, torch
torch.set_num_threads(1)
from brain_go_brrr.graph import laplacian_pe, dense_adjacency, pair_index, sparsify
batch, chunk = int(sys.argv[1]), int(sys.argv[2])
status = lambda field: int(re.search(field + r':\\s+(\\d+) kB', open('/proc/self/status').read()).group(1)) * 1024
torch.manual_seed(0)
adjacency = sparsify(dense_adjacency(torch.rand(batch, 960, 171), pair_index(19), 19), 3, 1e-4).requires_grad_()
probe = torch.randn(batch, 960, 19, 16)
open('/proc/self/clear_refs', 'w').write('5')            # reset the peak (VmHWM) to the current resident size
before = status('VmRSS')
(laplacian_pe(adjacency, 16, 1, chunk_size=chunk) * probe).sum().backward()
print(status('VmHWM') - before)
"""


def _pe_peak_bytes(batch, chunk):
    "Peak resident memory added by a dynamic-PE forward+backward of `batch` windows of 960 steps, in a fresh process."
    # a fixed mmap threshold: glibc's moving one keeps freed blocks resident at random, which made this test flaky
    env = {**SUBPROCESS_ENV, 'MALLOC_MMAP_THRESHOLD_': str(1 << 16)}
    out = subprocess.run([sys.executable, '-c', PE_MEMORY, str(batch), str(chunk)], capture_output=True, text=True,
                         cwd=ROOT, env=env, check=True)
    return int(out.stdout.split()[-1])


def test_dynamic_pe_memory_is_bounded_by_the_chunk():
    """From 4 to 16 windows (3,840 to 15,360 graphs) the peak grows, when chunked (256 graphs), only by what must scale
    with the batch (the adjacency's gradient, the encoding and its gradient: about 2.5x the adjacency's growth);
    decomposing everything at once, as the reference did, grows by several times that."""
    adjacency_bytes = lambda batch: batch * 960 * 19 * 19 * 4
    growth_of_io = adjacency_bytes(16) - adjacency_bytes(4)
    chunked = _pe_peak_bytes(16, 256) - _pe_peak_bytes(4, 256)
    unchunked = _pe_peak_bytes(16, 10 ** 6) - _pe_peak_bytes(4, 10 ** 6)
    print(f'peak growth 4 -> 16 windows: chunked {chunked / 2**20:.0f} MiB, unchunked {unchunked / 2**20:.0f} MiB, '
          f'input {growth_of_io / 2**20:.0f} MiB')
    assert chunked < 4 * growth_of_io
    assert unchunked > 3 * chunked


def test_state_dict_has_no_batch_shaped_buffers_and_loads_at_another_batch_size():
    torch.manual_seed(0)
    cfg, _ = detector_input(ROOT / 'params/cpu_smoke.yaml')
    model = Detector(cfg)
    model(torch.randn(3, 19, 1024)).sum().backward()
    state = model.state_dict()
    assert set(state) == {name for name, _ in model.named_parameters()}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    fresh = Detector(cfg)
    fresh.load_state_dict(torch.load(io.BytesIO(buffer.getvalue())))
    x = torch.randn(5, 19, 1024)
    assert torch.allclose(fresh.eval()(x), model.eval()(x), atol=1e-5)


def test_dense_ssgconv_equals_torch_geometric():
    from torch_geometric.nn import SSGConv
    torch.manual_seed(1)
    adjacency = sparsify(dense_adjacency(torch.rand(30, 171), pair_index(19), 19), top_k=3, threshold=0.2)
    adjacency[3] = 0
    g, i, j = adjacency.nonzero(as_tuple=True)
    edge_index, edge_weight = torch.stack([g * 19 + j, g * 19 + i]), adjacency[g, i, j]
    x = torch.randn(30, 19, 12)
    for K in (1, 2):
        theirs, ours = SSGConv(12, 6, alpha=0.05, K=K), DenseSSGConv(12, 6, alpha=0.05, K=K)
        ours.load_state_dict(theirs.state_dict())
        expected = theirs(x.reshape(-1, 12), edge_index, edge_weight).view(30, 19, 6)
        assert torch.allclose(ours(x, gcn_normalized(adjacency)), expected, atol=1e-5)


def test_fallback_switch(monkeypatch):
    x = torch.zeros(1)
    assert not uses_cuda_kernels(x)
    monkeypatch.setenv('SEIZURE_MAMBA_FORCE_FALLBACK', 'yes')
    assert not uses_cuda_kernels(x)
    monkeypatch.setenv('SEIZURE_MAMBA_FORCE_FALLBACK', 'maybe')
    with pytest.raises(ValueError, match='SEIZURE_MAMBA_FORCE_FALLBACK'):
        uses_cuda_kernels(x)


def test_edge_clamp_switch_and_counter(monkeypatch):
    monkeypatch.setenv('BGB_EDGE_CLAMP', '0')
    assert EdgeStream(edge_dim=2, n_layers=1, clamp=True).clamp is False
    monkeypatch.setenv('BGB_EDGE_CLAMP', 'true')
    assert EdgeStream(edge_dim=2, n_layers=1, clamp=False).clamp is True
    monkeypatch.setenv('BGB_EDGE_CLAMP', 'maybe')
    with pytest.raises(ValueError, match='BGB_EDGE_CLAMP'):
        EdgeStream(edge_dim=2, n_layers=1)
    monkeypatch.delenv('BGB_EDGE_CLAMP')
    edges = EdgeStream(edge_dim=2, n_layers=1)
    with torch.no_grad():
        edges.head.bias.fill_(5.0)                      # every weight above 1 before the clamp
        adjacency = edges(torch.randn(1, 4, 19, 8))
    assert edges.clamped.item() == 4 * 171
    assert adjacency.max() <= 1


@pytest.mark.skipif(not (torch.cuda.is_available() and uses_cuda_kernels(torch.zeros(1, device='cuda'))),
                    reason='needs a GPU and mamba-ssm: the CUDA path is untested on the CPU-only project machine')
def test_cuda_kernel_equals_the_pytorch_scan():
    torch.manual_seed(0)
    block = Mamba(32).cuda()
    x = torch.randn(2, 100, 32, device='cuda')
    fast = block(x)
    os.environ['SEIZURE_MAMBA_FORCE_FALLBACK'] = 'on'
    try: slow = block(x)
    finally: del os.environ['SEIZURE_MAMBA_FORCE_FALLBACK']
    assert torch.allclose(fast, slow, atol=1e-4)


def _training_step_launches(monkeypatch, backend, steps):
    "Operations dispatched by a training step of the reference's layers (small widths) over `steps` time steps."
    monkeypatch.setattr(ssm, 'scan_backend', lambda t: backend)
    torch.manual_seed(0)
    return step_launches(Detector(REFERENCE_LAYOUT), torch.randn(1, 19, 16 * steps))


def test_a_training_step_dispatches_the_same_few_operations_at_any_window_length(monkeypatch):
    """With a fused scan nothing loops over time steps: the same operations at 32 and 64 steps, under 6,000 (4,078 at
    the reference size, the issue's goal 10,000); the PyTorch scan's per-step loop shows, so a loop elsewhere would."""
    short, long = (_training_step_launches(monkeypatch, 'cpu-kernel', steps) for steps in (32, 64))
    assert short == long
    assert sum(short.values()) < 6000
    looped = [sum(_training_step_launches(monkeypatch, 'pytorch', steps).values()) for steps in (32, 64)]
    assert looped[1] > looped[0] + 32 * 16          # at least one operation per step in each of the 16 Mamba blocks


def test_the_triton_backend_launches_each_kernel_once_per_mamba_block_and_pass(monkeypatch):
    """16 Mamba blocks, checkpointed: the convolution and the scan forward twice (forward, recompute), their backward
    once; under 6,000 operations in all."""
    pytest.importorskip('triton')
    if not interpreted(): pytest.skip('counted here on CPU tensors, with the kernels in Triton\'s interpreter')
    counts = _training_step_launches(monkeypatch, 'triton', 16)
    launches = collections.Counter()
    for (block, op), n in counts.items():
        if op.startswith('triton:'): launches[op] += n
    assert launches == {'triton:_conv_forward': 32, 'triton:_scan_forward': 32, 'triton:_scan_backward': 16,
                        'triton:_conv_backward': 16}
    assert sum(counts.values()) < 6000


def test_a_triton_launch_counts_as_one_operation(monkeypatch):
    "Under Triton's interpreter the kernel's own work is not counted: one launch, one operation."
    triton = pytest.importorskip('triton')
    import triton.language as tl
    monkeypatch.setenv('TRITON_INTERPRET', '1')

    @triton.jit
    def double(x_ptr, n, BLOCK: tl.constexpr):
        offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        tl.store(x_ptr + offsets, tl.load(x_ptr + offsets, mask=offsets < n) * 2, mask=offsets < n)

    x = torch.ones(100)
    with LaunchCounter() as counter:
        double[(4,)](x, 100, BLOCK=32)
        double[(4,)](x, 100, BLOCK=32)
    assert counter.counts == {('', 'triton:double'): 2}
    assert torch.equal(x, torch.full((100,), 4.0))
