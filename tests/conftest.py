"Fixtures shared by the pytest suites: small TUSZ-layout corpora written with MNE."
import os
from pathlib import Path
import mne
import numpy as np
import pytest
import torch

from brain_go_brrr.signal import CHANNELS

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
