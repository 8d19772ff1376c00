"""SeizureTransformer against the authors' code: the released state-dict layout, the output of known weights, the
released preprocessing, and round trips of files written here.

The expected values in tests/data/seizure_transformer_fixture.pt were computed outside this repository by the
authors' own modules (time_step_level/model.py of github.com/keruiwu/SeizureTransformer, whose SeizureTransformer
with its default sizes is the released wu_2025 architecture, and the windowing and filters of wu_2025/utils.py),
given the weights of `known_weights` and the inputs stored in the fixture or made by `synthetic_recording`.

The events in tests/data/seizure_transformer_post.npz are the authors' post-processing, run outside this repository by
a script kept out of it: `predict` of wu_2025/src/wu_2025/utils.py (github.com/keruiwu/SeizureTransformer, commit
803dcfb9db66fce57ab49deaa9a40a4a2804b3da, the package of their SzCORE submission), given `torch.nn.Identity()` as the
model and a one-batch loader holding each float32 trace, so its `> 0.8`, opening, closing and 2-s minimum ran on the
trace; the mask was written as their main.py writes it, `epilepsy2bids` `Annotations.loadMask(mask, 256).getEvents()`
(epilepsy2bids 0.0.7, scipy 1.17.1, numpy 2.4.6). The 174 traces: for each seed 0-159, `np.random.default_rng(seed)`
drew (seed % 8 == 7) a logistic random walk of 700-1999 samples, in about half of them the values within 0.02 of 0.8
set to exactly float32(0.8); (other odd seeds) 1-13 constant segments at 0.05, 0.5, 0.79, float32(0.8), the next
float32 above it, 0.81, 0.95 or 1.0, of 1-8, 505-521 or 9-299 samples; (even seeds) events of 500-529 or 760-799
samples above 0.8 with up to three dips of 1-7 samples, spikes of 1-7 samples, some at the trace's ends; then 14
constant traces, 1, 3, 5, 6, 511, 512 and 513 samples at float32(0.8) and at 0.9. `probs` holds them concatenated
(`offsets`), each event is a row of `event_trace`, `event_start_s`, `event_stop_s`."""
import math, pickle
from pathlib import Path
import numpy as np
import pytest
import torch
from brain_go_brrr.checkpoints import CheckpointError
from brain_go_brrr.eegpt import n_params
from brain_go_brrr.seizure_transformer import (RELEASED_CHANNELS, RELEASED_POST, RELEASED_PROFILE, SIZES,
                                               TEMPLATE_PREFIX, SeizureTransformer, load_seizure_transformer,
                                               read_released_state_dict, released_events, released_layout,
                                               released_probabilities, save_released_layout)
from brain_go_brrr.signal import CHANNELS

FIXTURE = Path(__file__).parent / 'data' / 'seizure_transformer_fixture.pt'
POST_FIXTURE = Path(__file__).parent / 'data' / 'seizure_transformer_post.npz'
PE = 'position_encoding.pe'  # not in known_weights: each side keeps the table its own code computes

def known_weights(layout) -> dict[str, torch.Tensor]:
    "Weights for each (key, shape) of `layout` from sines of the element index: the same on every machine and version."
    sd = {}
    for i, (key, shape) in enumerate(layout):
        if key == PE: continue
        t = torch.arange(math.prod(shape), dtype=torch.float64)
        wave = (torch.sin(0.61803 * t + 1.3 * i) * torch.cos(0.0137 * t + i)).reshape(shape)  # spread over +-1
        if key.endswith('num_batches_tracked'): v = torch.tensor(0)
        elif key.endswith('running_var'): v = 1 + 0.5 * wave.abs()
        elif key.endswith('running_mean'): v = 0.1 * wave
        elif len(shape) > 1: v = 2 * wave / math.sqrt(math.prod(shape[1:]))  # about unit gain per layer
        elif key.endswith('weight'): v = 1 + 0.1 * wave  # a norm's scale
        else: v = 0.1 * wave
        sd[key] = v.float() if v.is_floating_point() else v
    return sd

def synthetic_recording(sfreq: float = 250.0, seconds: float = 70.0) -> np.ndarray:
    "(19 channels in RELEASED_CHANNELS order, samples) in µV: rhythms, 60-Hz line noise, drift and fast ripple."
    t = np.arange(int(seconds * sfreq)) / sfreq
    c = np.arange(19)[:, None]
    return (40 * np.sin(2 * np.pi * (1.5 + c) * t) + 15 * np.sin(2 * np.pi * 60 * t + c) + 5 * (c - 9) * t
            + 20 * np.sin(2 * np.pi * 0.2 * (1 + c / 19) * t) + 3 * np.sin(1000 * (c + 1) * t))

def in_project_order(x: np.ndarray) -> np.ndarray:
    return x[[RELEASED_CHANNELS.index(c) for c in CHANNELS]]

@pytest.fixture(scope='module')
def fixture(): return torch.load(FIXTURE, weights_only=True)

@pytest.fixture(scope='module')
def published(fixture, tmp_path_factory):
    "The published model loaded, through the strict loader, from a released-layout file of known weights."
    sd = known_weights(fixture['layout']) | {PE: SeizureTransformer().state_dict()[PE]}
    path = tmp_path_factory.mktemp('released') / 'model.pth'
    torch.save(sd, path)
    return load_seizure_transformer(path)

def test_layout_is_the_released_one(fixture):
    assert FIXTURE.stat().st_size < 1_000_000
    assert released_layout() == {k: tuple(s) for k, s in fixture['layout']}
    # as read in the authors' code: five encoder levels, kernels 11 9 7 7 5; decoder kernels 3 5 5 7 7
    layout = released_layout()
    assert [layout[f'encoder.convs.{i}.weight'] for i in range(5)] == [
        (32, 19, 11), (64, 32, 9), (128, 64, 7), (256, 128, 7), (512, 256, 5)]
    assert [layout[f'decoder_d.convs.{i}.weight'] for i in range(5)] == [
        (512, 512, 3), (256, 512, 5), (128, 256, 5), (64, 128, 7), (32, 64, 7)]
    assert [layout[f'res_cnn_stack.members.{i}.conv2.weight'][2] for i in range(7)] == [3, 3, 3, 3, 2, 3, 2]
    assert layout['conv_d.weight'] == (1, 32, 11) and layout[PE] == (6000, 1, 512)
    assert layout['transformer_encoder.layers.7.linear1.weight'] == (2048, 512)
    assert layout['transformer_encoder.layers.0.self_attn.in_proj_weight'] == (1536, 512)
    assert sum(k.startswith(TEMPLATE_PREFIX) for k in layout) == 12

def test_parameter_count(fixture):
    template = sum(math.prod(s) for k, s in fixture['layout'] if k.startswith(TEMPLATE_PREFIX))
    with torch.device('meta'): model = SeizureTransformer()
    assert n_params(model) == fixture['n_params_authors'] - template == 37_848_897

@pytest.mark.parametrize('case', ['even', 'odd'])
def test_known_weights_give_the_authors_output(fixture, published, case):
    c = fixture['cases'][case]
    with torch.no_grad(): logits = published(c['x'])
    assert logits.shape == c['logits'].shape
    torch.testing.assert_close(logits, c['logits'], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(torch.sigmoid(logits), c['probs'], rtol=1e-4, atol=1e-5)

def test_the_released_preprocessing(fixture):
    p = fixture['preprocessing']
    windows = RELEASED_PROFILE.windows(RELEASED_PROFILE.recording(in_project_order(synthetic_recording()), 250.0,
                                                                   CHANNELS))
    assert windows.shape == tuple(p['shape'])
    np.testing.assert_allclose(windows[..., ::p['stride']], p['windows'].numpy(), rtol=1e-5, atol=1e-5)

def test_released_inference_end_to_end(fixture, published):
    probs = released_probabilities(published, in_project_order(synthetic_recording()), 250.0, CHANNELS)
    np.testing.assert_allclose(probs, fixture['preprocessing']['probs'].numpy(), rtol=1e-4, atol=1e-5)

def test_released_events_are_the_authors_on_random_traces():
    f = np.load(POST_FIXTURE)
    traces = np.split(f['probs'], f['offsets'][1:-1])
    assert len(traces) == 174 and all(t.dtype == np.float32 for t in traces)
    ours = [[(a, b) for a, b, _ in released_events(t, 256.0, **RELEASED_POST)] for t in traces]
    theirs = [[] for _ in traces]
    for k, a, b in zip(f['event_trace'].tolist(), f['event_start_s'].tolist(), f['event_stop_s'].tolist()):
        theirs[k].append((a, b))
    assert ours == theirs
    assert sum(map(len, theirs)) == 124 and sum(1 for t in traces if (t == np.float32(0.8)).any()) > 20

def train_a_little(seed=0) -> SeizureTransformer:
    torch.manual_seed(seed)
    model = SeizureTransformer(SIZES['cpu'])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(2):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(torch.randn(2, 19, 512)),
                                                                    torch.rand(2, 512).round())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()

def test_a_model_trained_here_round_trips(tmp_path):
    model, x = train_a_little(), torch.randn(1, 19, 777)
    path = save_released_layout(model, tmp_path / 'model.pth')
    assert {k: tuple(v.shape) for k, v in torch.load(path, weights_only=True).items()} == released_layout(SIZES['cpu'])
    loaded = load_seizure_transformer(path, SIZES['cpu'])
    with torch.no_grad(): assert torch.equal(loaded(x), model(x))
    # as a training checkpoint keeps it: the state dict alone, loaded strictly into a model of the same config
    torch.save(model.state_dict(), tmp_path / 'state.pt')
    again = SeizureTransformer(SIZES['cpu'])
    again.load_state_dict(torch.load(tmp_path / 'state.pt', weights_only=True), strict=True)
    with torch.no_grad(): assert torch.equal(again.eval()(x), model(x))

def test_wrappers_the_authors_might_have_written_load(tmp_path):
    model = train_a_little()
    sd = torch.load(save_released_layout(model, tmp_path / 'model.pth'), weights_only=True)
    torch.save({'module.' + k: v for k, v in sd.items()}, tmp_path / 'dp.pth')
    torch.save({'state_dict': sd}, tmp_path / 'wrapped.pth')
    for name in ('dp.pth', 'wrapped.pth'):
        assert read_released_state_dict(tmp_path / name).keys() == sd.keys()
        load_seizure_transformer(tmp_path / name, SIZES['cpu'])

def test_files_that_differ_are_refused_naming_the_file_and_the_difference(tmp_path):
    sd = torch.load(save_released_layout(train_a_little(), tmp_path / 'model.pth'), weights_only=True)
    def refused(obj, name, *words):
        path = tmp_path / name
        torch.save(obj, path)
        with pytest.raises(CheckpointError) as e: load_seizure_transformer(path, SIZES['cpu'])
        assert str(path) in str(e.value) and all(w in str(e.value) for w in words), e.value
    refused({k: v for k, v in sd.items() if k != 'conv_d.bias'}, 'missing.pth', '1 missing', 'conv_d.bias')
    refused({k: v for k, v in sd.items() if not k.startswith(TEMPLATE_PREFIX)}, 'no_template.pth', '12 missing')
    refused(sd | {'extra.weight': torch.zeros(1)}, 'extra.pth', '1 unexpected', 'extra.weight')
    refused(sd | {'conv_d.weight': torch.zeros(1, 8, 9)}, 'shape.pth',
            'conv_d.weight (1, 8, 9) (expected (1, 8, 11))')
    refused([1, 2], 'list.pth', 'expected a state dict')
    refused({'state_dict': {'a': 1}}, 'not_tensors.pth', 'expected a state dict')
    with pytest.raises(CheckpointError, match='implies n_channels=19, filters=\\[8, 16, 32, 64, 64\\]'):
        load_seizure_transformer(tmp_path / 'model.pth')  # the published config for a CPU-size file
    (tmp_path / 'text.pth').write_text('not a checkpoint')
    with pytest.raises(CheckpointError, match='not a PyTorch checkpoint'):
        load_seizure_transformer(tmp_path / 'text.pth')
    with pytest.raises(FileNotFoundError, match='nothing is downloaded'):
        load_seizure_transformer(tmp_path / 'none.pth')

class NotATensor: pass

def test_python_objects_are_not_unpickled(tmp_path):
    torch.save({'w': torch.zeros(1), 'obj': NotATensor()}, tmp_path / 'obj.pth')
    with pytest.raises(CheckpointError, match='weights_only=True refuses.*Unsupported global'):
        read_released_state_dict(tmp_path / 'obj.pth')

def test_profile_refuses_missing_channels_and_survives_flat_ones():
    x = in_project_order(synthetic_recording(seconds=2))
    with pytest.raises(ValueError, match='PZ'): RELEASED_PROFILE.recording(x[:18], 250.0, CHANNELS[:18])
    x[0] = 0
    rec = RELEASED_PROFILE.recording(x, 250.0, ['EEG ' + c + '-REF' for c in CHANNELS])  # TUSZ labels work too
    assert np.isfinite(rec).all() and (rec[RELEASED_CHANNELS.index(CHANNELS[0])] == 0).all()
