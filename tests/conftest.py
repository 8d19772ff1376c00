"Fixtures shared by the pytest suites: small TUSZ-layout corpora written with MNE."
import os
from pathlib import Path
import mne
import numpy as np
import pytest
import torch

from brain_go_brrr.params import load_params
from brain_go_brrr.signal import CHANNELS
from brain_go_brrr.synth import synth_tusz

os.environ.setdefault('OMP_NUM_THREADS', '1')
torch.set_num_threads(1)

CSV_BI = """# version = csv_v1.0.0
# bname = {bname}
# duration = {duration:.4f} secs
# montage_file = nedc_eas_default_montage.txt
#
channel,start_time,stop_time,label,confidence
{rows}"""


def write_tusz_edf(root, split, subject, token='t000', sfreq=256.0, seconds=120, seizure=(30.0, 55.0),
                    labels=None, seed=0, annotation=True):
    "One EDF with its .csv_bi in the TUSZ layout; returns the EDF path."
    d = Path(root) / 'edf' / split / subject / 's001_2010' / '01_tcp_ar'
    d.mkdir(parents=True, exist_ok=True)
    labels = labels or [f'EEG {c}-REF' for c in CHANNELS] + ['EEG EKG1-REF', 'PHOTIC PH']
    data = np.random.default_rng(seed).normal(0, 20e-6, (len(labels), int(sfreq * seconds)))
    edf = d / f'{subject}_s001_{token}.edf'
    raw = mne.io.RawArray(data, mne.create_info(labels, sfreq, 'eeg'), verbose='error')
    mne.export.export_raw(edf, raw, fmt='edf', overwrite=True, verbose='error')
    if annotation:
        a, b = seizure
        rows = f'TERM,0.0000,{a:.4f},bckg,1.0000\nTERM,{a:.4f},{b:.4f},seiz,1.0000\n'
        if b < seconds: rows += f'TERM,{b:.4f},{seconds:.4f},bckg,1.0000\n'
        edf.with_suffix('.csv_bi').write_text(CSV_BI.format(bname=edf.stem, duration=seconds, rows=rows))
    return edf


@pytest.fixture
def write_edf():
    return write_tusz_edf


# The tiny detector and training run of tests/test_train.py and tests/test_run_integrity.py
TINY_MODEL = dict(tcn_layers=3, tcn_base_channels=8, tcn_channels=16, tcn_downsample=8, d_node=8, node_layers=1,
                  node_d_state=2, edge_dim=2, edge_layers=1, edge_d_state=2, pe_k=4, semi_dynamic_interval=4)


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
    "A six-subject synthetic TUSZ corpus and a cache folder, shared by a test module."
    root = tmp_path_factory.mktemp('corpus')
    return dict(data_dir=str(synth_tusz(root / 'tusz', subjects=6, seed=5)), cache_dir=str(root / 'cache'))


def tiny(corpus, out, **kw):
    "Parameters of a two-epoch run of the tiny detector on `corpus`, writing to `out`."
    return load_params(None, **{**corpus, 'output_dir': str(out), 'window_s': 8, 'stride_s': 8, 'epochs': 2,
                                'epoch_size': 16, 'batch_size': 4, 'warmup_steps': 2, 'cache_workers': 1,
                                'audit_windows': 8, 'model': TINY_MODEL, **kw})


def building(cls):
    "A stand-in for `train.build_detector` that builds `cls`, a `Detector` subclass with a fault planted."
    return lambda cfg, edge_clamp=True: cls(cfg.model_copy(update=dict(edge_clamp=edge_clamp)))


@pytest.fixture(scope='module')
def averaged(corpus, tmp_path_factory):
    """best.pt of the tiny detector trained on the synthetic TUSZ corpus re-referenced to the common average, as SzCORE's
    recordings are (tests/test_bids.py, tests/test_benchmark.py)."""
    out = tmp_path_factory.mktemp('run_avg')
    p = tiny({**corpus, 'cache_dir': str(out / 'cache')}, out, reference='common_average')
    from brain_go_brrr.train import train  # the suites that need no training do not import it
    train(p)
    return p.run_dir / 'best.pt'


@pytest.fixture(scope='module')
def as_recorded(averaged, tmp_path_factory):
    """The same weights as a model trained on TUSZ as recorded: `reference: as_recorded` and the input references a
    training on the synthetic corpus records (`-REF` and `-LE`), saved as training saves a checkpoint."""
    from brain_go_brrr.checkpoints import load_checkpoint, save_checkpoint
    ck, out = load_checkpoint(averaged), tmp_path_factory.mktemp('run_ref')
    ck['params'] |= dict(reference='as_recorded', output_dir=str(out), cache_dir=str(out / 'cache'))
    ck['references'] = ['LE', 'REF']
    path = out / 'best.pt'
    save_checkpoint(path, ck)
    return path
