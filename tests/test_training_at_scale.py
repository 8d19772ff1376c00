"""Training at real scale: the schedule under fp16 skips, class-imbalance losses, TensorBoard and the input clip,
mid-epoch resume, the DDP timeout."""
import json, os, signal, socket, subprocess, sys, time
from contextlib import nullcontext
import numpy as np
import torch

import brain_go_brrr.train as T
from brain_go_brrr.model import Detector, DetectorConfig
from brain_go_brrr.checkpoints import CheckpointError
from brain_go_brrr.params import load_params
from brain_go_brrr.reporting import tensorboard_writer
from conftest import building, tiny


class Overflowing(Detector):
    "A real detector whose 2nd and 4th backward overflow (infinite gradient entries), as fp16 does."
    def __init__(self, cfg):
        super().__init__(cfg)
        self.calls = 0
        next(self.parameters()).register_hook(lambda g: g * float('inf') if self.calls in (2, 4) else g)

    def forward(self, x):
        self.calls += 1
        return super().forward(x)


def test_the_schedule_advances_with_real_updates_only(corpus, tmp_path, monkeypatch):
    "The fp16 loss scaler skips an overflowing step: the learning rate of each real update stays what it was."
    kw = dict(epochs=1, epoch_size=32, mixed_precision=True, precision_dtype='float16', warmup_steps=4)
    clean = T.train(tiny(corpus, tmp_path / 'clean', **kw))
    monkeypatch.setattr(T, 'build_detector', building(Overflowing))
    faulty = T.train(tiny(corpus, tmp_path / 'faulty', **kw))
    assert faulty['scaler_skipped_steps'] == clean['scaler_skipped_steps'] + 2 and faulty['nonfinite_steps'] == 0
    lr_per_update = lambda m: [h['lr'] for h in m['history'] if h.get('updated')]
    assert len(lr_per_update(faulty)) == len(lr_per_update(clean)) - 2
    assert lr_per_update(faulty) == lr_per_update(clean)[:len(lr_per_update(faulty))]


def test_loss_options_against_a_hand_computation():
    logits, y = torch.tensor([1.5, -0.5, 0.2, -2.0]), torch.tensor([1.0, 1.0, 0.0, 0.0])
    p = torch.sigmoid(logits)
    ce = -(y * p.log() + (1 - y) * (1 - p).log())
    assert torch.allclose(T.seizure_loss(logits, y, 'focal', gamma=0.0), T.seizure_loss(logits, y, 'bce'))
    assert torch.allclose(T.seizure_loss(logits, y, 'bce'), ce.mean())
    assert torch.allclose(T.seizure_loss(logits, y, 'bce', pos_weight=4.0), (ce * (1 + 3 * y)).mean())
    p_right = y * p + (1 - y) * (1 - p)
    focal = (0.3 * y + 0.7 * (1 - y)) * (1 - p_right) ** 2 * ce
    assert torch.allclose(T.seizure_loss(logits, y, 'focal', gamma=2.0, alpha=0.3), focal.mean())
    params = load_params(None, loss='focal', focal_gamma=1.0, pos_weight=2.0)
    assert torch.allclose(T.loss_of(params)(logits, y), T.seizure_loss(logits, y, 'focal', 2.0, 1.0))


def test_a_run_logs_to_tensorboard_and_counts_clipped_inputs(corpus, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    m = T.train(tiny(corpus, tmp_path, epochs=1, loss='focal', input_clip_sigma=1.0))
    saved = json.loads((tmp_path / 'train' / 'metrics.json').read_text())
    assert saved['clipped_input_samples'] == m['clipped_input_samples'] > 0
    events = EventAccumulator(str(tmp_path / 'train' / 'tensorboard')).Reload()
    tags = set(events.Tags()['scalars'])
    assert {'train/loss', 'train/lr', 'train/grad_norm'} <= tags
    assert {'dev/dev_loss', 'dev/dev_auroc', 'dev/dev_sens_at_fa.10'} <= tags
    assert {f'counters/{c}' for c in T.COUNTERS.values()} <= tags
    assert [e.value for e in events.Scalars('counters/clipped_input_samples')][-1] == m['clipped_input_samples']
    assert len(events.Scalars('train/loss')) == m['steps']
    assert not tensorboard_writer(tiny(corpus, tmp_path, tensorboard=False))


# A run that stops moving once it has saved the checkpoint of epoch 1, batch 3 (it waits forever after that save):
# the test kills it there, at that position, however slow or fast the machine is (no race against polling).
TRAIN_UNTIL_1_3 = ("import json, sys, threading, torch\ntorch.set_num_threads(1)\n"
                   "from brain_go_brrr.params import load_params\nimport brain_go_brrr.train as T\n"
                   "real = T.save_checkpoint\n"
                   "def save(path, checkpoint):\n    real(path, checkpoint)\n"
                   "    if (checkpoint['state']['epoch'], checkpoint['state']['batch']) >= (1, 3): threading.Event().wait()\n"
                   "T.save_checkpoint = save\nT.train(load_params(None, **json.loads(sys.argv[1])))")


def checkpoint_position(path) -> tuple[int, int] | None:
    "(epoch, batch) of a checkpoint being rewritten by another process; None until one is whole."
    try: state = T.load_checkpoint(path)['state']
    except (OSError, CheckpointError): return None
    return state['epoch'], state['batch']


def test_a_run_killed_mid_epoch_resumes_to_the_same_weights(corpus, tmp_path):
    "kill -9 inside the second epoch; the resumed run reaches the weights and schedule of a run never stopped."
    kw = dict(epochs=2, epoch_size=64, checkpoint_every_minutes=1e-9)  # last.pt after every step
    T.train(tiny(corpus, tmp_path / 'a', **kw))
    straight = T.load_checkpoint(tmp_path / 'a' / 'train' / 'last.pt')

    killed = tiny(corpus, tmp_path / 'b', **kw)
    log = tmp_path / 'killed.stderr'
    with open(log, 'w') as err: proc = subprocess.Popen([sys.executable, '-c', TRAIN_UNTIL_1_3, killed.model_dump_json()],
                                                         stderr=err)
    give_up = time.monotonic() + 1800  # a hang guard only: the run waits at (1, 3) until it is killed
    while (pos := checkpoint_position(killed.run_dir / 'last.pt')) is None or pos < (1, 3):
        assert proc.poll() is None and time.monotonic() < give_up, f'not killed at (1, 3) ({pos}): {log.read_text()}'
        time.sleep(0.05)
    assert pos == (1, 3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    T.train(tiny(corpus, tmp_path / 'b', resume=True, **kw))
    resumed = T.load_checkpoint(tmp_path / 'b' / 'train' / 'last.pt')
    assert resumed['state']['resumes'][0]['epoch'] == 1 and 16 < resumed['state']['resumes'][0]['step'] < 32
    assert resumed['state']['step'] == straight['state']['step']
    for k, v in straight['model'].items():
        assert torch.equal(v, resumed['model'][k]), k
    lrs = lambda ck: [h['lr'] for h in ck['state']['history'] if 'lr' in h]
    assert lrs(resumed) == lrs(straight)


DEV = ("import json, os, sys, torch\nimport numpy as np\nimport torch.distributed as dist\n"
       "from contextlib import nullcontext\nfrom brain_go_brrr.cache import open_cache\n"
       "from brain_go_brrr.model import Detector, DetectorConfig\nimport brain_go_brrr.train as T\n"
       "torch.set_num_threads(1)\ndist.init_process_group('gloo')\nrank = dist.get_rank()\ntorch.manual_seed(0)\n"
       "model = Detector(DetectorConfig(**json.loads(sys.argv[1])))\ncache = open_cache(sys.argv[2])\n"
       "probs = T.dev_probabilities(model, cache, 1024, lambda x: x / 20, 'cpu', 4, nullcontext, rank, 2)\n"
       "if rank == 0: np.savez(sys.argv[3], **probs)\ndist.destroy_process_group()")


def test_the_dev_evaluation_split_across_two_processes_equals_one_process(corpus, tmp_path):
    from brain_go_brrr.cache import build_cache, open_cache
    from conftest import TINY_MODEL
    build_cache(corpus['data_dir'], tmp_path / 'dev', 'train', progress=False)  # dev holds one recording here
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    env = lambda rank: {**os.environ, 'RANK': str(rank), 'WORLD_SIZE': '2', 'MASTER_ADDR': '127.0.0.1',
                        'MASTER_PORT': str(port)}
    args = [sys.executable, '-c', DEV, json.dumps(TINY_MODEL), str(tmp_path / 'dev'), str(tmp_path / 'probs.npz')]
    procs = [subprocess.Popen(args, env=env(rank)) for rank in (0, 1)]
    assert [p.wait(timeout=600) for p in procs] == [0, 0]
    gathered = dict(np.load(tmp_path / 'probs.npz'))
    torch.manual_seed(0)
    cache = open_cache(tmp_path / 'dev')
    single = T.dev_probabilities(Detector(DetectorConfig(**TINY_MODEL)), cache, 1024, lambda x: x / 20, 'cpu', 4,
                                 nullcontext)
    assert set(gathered) == set(single) == {r.token for r in cache.recordings} and len(single) > 1
    for token, probs in single.items():
        assert np.array_equal(gathered[token], probs), token
    assert T.dev_metrics(cache, gathered) == T.dev_metrics(cache, single)


def test_the_process_group_waits_ddp_timeout_minutes(monkeypatch):
    seen = {}
    monkeypatch.setenv('WORLD_SIZE', '2')
    monkeypatch.setattr(T.dist, 'is_initialized', lambda: False)
    monkeypatch.setattr(T.dist, 'init_process_group', lambda backend, timeout: seen.update(backend=backend,
                                                                                          timeout=timeout))
    monkeypatch.setattr(T.dist, 'get_rank', lambda: 1)
    assert T.setup_distributed(torch.device('cpu'), 90) == (1, 2)
    assert seen == dict(backend='gloo', timeout=T.timedelta(minutes=90))
