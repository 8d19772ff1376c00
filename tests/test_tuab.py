"TUAB: discovery from the layout, the subject-disjoint validation split, the cache through the signal path, windows."
import shutil
from pathlib import Path
import mne
import numpy as np
import pytest
import torch

from brain_go_brrr.cache import open_cache
from brain_go_brrr.normalization import compute_norm_stats
from brain_go_brrr.signal import CHANNELS, preprocess, read_eeg
from brain_go_brrr.tuab import (TuabWindows, build_tuab_cache, cache_subset, check_tuab_splits, describe, discover_tuab,
                                parse_tuab_path, split_by_subject, summarize_cache)


def write_tuab_edf(root, split, label, subject, session='s001', token='t000', seconds=30, sfreq=250.0, seed=0, labels=None):
    "One EDF in the TUAB layout (19 channels + EKG, µV-scale noise; abnormal ones with 2 Hz slowing)."
    d = Path(root) / 'edf' / split / label / '01_tcp_ar'
    d.mkdir(parents=True, exist_ok=True)
    names = labels or [f'EEG {c}-REF' for c in CHANNELS] + ['EEG EKG1-REF']
    t = np.arange(int(seconds * sfreq)) / sfreq
    data = np.random.default_rng(seed).normal(0, 15e-6, (len(names), t.size)) + (label == 'abnormal') * 40e-6 * np.sin(2 * np.pi * 2 * t)
    path = d / f'{subject}_{session}_{token}.edf'
    raw = mne.io.RawArray(data, mne.create_info(names, sfreq, 'eeg'), verbose='error')
    mne.export.export_raw(path, raw, fmt='edf', overwrite=True, verbose='error')
    return path


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp('tuab')
    k = 0
    for split, label, subjects in (('train', 'normal', 'abc'), ('train', 'abnormal', 'def'), ('eval', 'normal', 'g'), ('eval', 'abnormal', 'h')):
        for s in subjects:
            write_tuab_edf(root, split, label, f'aaaaaaa{s}', seed=k); k += 1
    write_tuab_edf(root, 'train', 'abnormal', 'aaaaaaad', session='s002', seed=k)  # a second session of a subject
    write_tuab_edf(root, 'train', 'normal', 'aaaaaaai', labels=[f'EEG {c}-REF' for c in CHANNELS[:12]])  # too few channels
    return root


def test_discovery_parses_split_label_subject(corpus):
    files = discover_tuab(corpus)
    assert len(files) == 10 and len(discover_tuab(corpus, 'eval')) == 2
    d = describe(files)
    assert d['train/abnormal'] == 4 and d['train/normal'] == 4 and d['train subjects'] == 7 and d['eval subjects'] == 2
    f = next(f for f in files if f.session == 's002')
    assert (f.split, f.label, f.subject, f.token, f.montage, f.target) == ('train', 'abnormal', 'aaaaaaad', 't000', '01_tcp_ar', 1)
    check_tuab_splits(files)


def test_discovery_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no 'edf/' folder"): discover_tuab(tmp_path)
    write_tuab_edf(tmp_path, 'train', 'normal', 'x')
    (tmp_path / 'edf' / 'train' / 'maybe' / '01_tcp_ar').mkdir(parents=True)
    odd = tmp_path / 'edf' / 'train' / 'maybe' / '01_tcp_ar' / 'y_s001_t000.edf'
    odd.write_bytes(b'')
    with pytest.raises(ValueError, match='maybe'): discover_tuab(tmp_path)
    with pytest.raises(ValueError, match='split must be one of'): discover_tuab(tmp_path, 'dev')


def test_a_subject_in_train_and_eval_is_refused(tmp_path):
    write_tuab_edf(tmp_path, 'train', 'normal', 'same')
    write_tuab_edf(tmp_path, 'eval', 'abnormal', 'same', session='s002')
    with pytest.raises(ValueError, match='1 subject.*same'): check_tuab_splits(discover_tuab(tmp_path))


def fake_files(n_normal=30, n_abnormal=20, sessions=3):
    return [parse_tuab_path(f'/d/edf/train/{lab}/01_tcp_ar/s{i:03d}{lab[0]}_s00{k}_t000.edf', '/d')
            for lab, n in (('normal', n_normal), ('abnormal', n_abnormal)) for i in range(n) for k in range(1, sessions + 1)]


@pytest.mark.parametrize('seed', range(5))
def test_validation_split_is_subject_disjoint_stratified_and_seeded(seed):
    files = fake_files()
    tr, va = split_by_subject(files, 0.2, seed)
    assert not {f.subject for f in tr} & {f.subject for f in va} and sorted(map(str, (f.path for f in tr + va))) == sorted(str(f.path) for f in files)
    assert len({f.subject for f in va if f.label == 'normal'}) == 6 and len({f.subject for f in va if f.label == 'abnormal'}) == 4
    assert split_by_subject(files, 0.2, seed) == (tr, va)
    assert split_by_subject(files, 0.2, seed + 100) != (tr, va)


def test_validation_split_keeps_both_classes_of_a_tiny_train_set_and_refuses_eval():
    tr, va = split_by_subject(fake_files(2, 2, 1), 0.1)
    assert {f.label for f in va} == {'normal', 'abnormal'} and {f.label for f in tr} == {'normal', 'abnormal'}
    ev = parse_tuab_path('/d/edf/eval/normal/01_tcp_ar/e_s001_t000.edf', '/d')
    with pytest.raises(ValueError, match='never from'): split_by_subject(fake_files(2, 2, 1) + [ev])
    with pytest.raises(ValueError, match='val_fraction'): split_by_subject(fake_files(), 1.0)


def test_cache_goes_through_the_signal_path_with_a_constant_label(corpus, tmp_path):
    cache = build_tuab_cache(corpus, tmp_path / 'train', 'train', progress=False)
    assert cache.config['corpus'] == 'tuab' and cache.config['split'] == 'train' and cache.config['sfreq'] == 256.0
    assert len(cache.recordings) == 7 and len(cache.failures) == 1 and 'missing channel' in cache.failures[0]['reason']
    f = next(f for f in discover_tuab(corpus, 'train') if f.bname == 'aaaaaaad_s001_t000')
    x, sfreq, _ = read_eeg(f.path)
    np.testing.assert_array_equal(cache.signal(f.bname), preprocess(x, sfreq))  # the TUSZ path, nothing else
    labels = cache.labels(f.bname)
    assert labels.dtype == np.uint8 and labels.min() == labels.max() == 1 and len(labels) == 30 * 256
    assert summarize_cache(cache) | {'hours': 0} == dict(recordings=7, normal=3, abnormal=4, subjects=6, hours=0, failed=1)
    # resumable: a second build reads nothing that is cached
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / 'train' / 'recordings').glob('*.npy')}
    build_tuab_cache(corpus, tmp_path / 'train', 'train', progress=False)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / 'train' / 'recordings').glob('*.npy')} == mtimes
    with pytest.raises(ValueError, match='other settings'): build_tuab_cache(corpus, tmp_path / 'train', 'train', progress=False, l_freq=1.0)


def test_statistics_of_the_training_subjects_only(corpus, tmp_path):
    cache = build_tuab_cache(corpus, tmp_path / 'train', 'train', progress=False)
    tr, va = split_by_subject(discover_tuab(corpus, 'train'), 0.34, seed=0)
    part = cache_subset(cache, tr)
    assert {r.subject for r in part.recordings}.isdisjoint({f.subject for f in va}) and len(cache.recordings) == 7
    stats = compute_norm_stats(part)
    assert stats.provenance['corpus'] == 'tuab' and stats.provenance['n_recordings'] == len(part.recordings)
    assert stats.channels == list(CHANNELS) and stats.unit == 'uV' and np.all((stats.std > 1) & (stats.std < 100))


def test_windows_carry_their_recordings_label(corpus, tmp_path):
    cache = build_tuab_cache(corpus, tmp_path / 'eval', 'eval', progress=False)
    ds = TuabWindows(cache, window_s=4.0)
    assert len(ds) == 2 * 7  # 30 s: 7 whole non-overlapping 4-s windows each
    x, y = ds[8]
    assert x.shape == (19, 1024) and x.dtype == torch.float32 and y.item() == ds.labels[8]
    assert sorted(ds.labels.tolist()) == [0] * 7 + [1] * 7 and set(ds.recording_of.tolist()) == {0, 1}
    capped = TuabWindows(cache, window_s=4.0, max_windows=3)
    assert len(capped) == 6 and capped.index[:3, 1].tolist() == [0, 3 * 1024, 6 * 1024]
    overlapping = TuabWindows(cache, window_s=4.0, stride_s=2.0)
    assert len(overlapping) == 2 * 14
    loader = torch.utils.data.DataLoader(ds, batch_size=5)
    xb, yb = next(iter(loader))
    assert xb.shape == (5, 19, 1024) and yb.shape == (5,)


def test_the_synthetic_tuab_corpus_is_read_as_tuab(tmp_path):
    synth = pytest.importorskip('brain_go_brrr.synth')
    root = synth.synth_tuab(tmp_path / 'synth', subjects=8, seed=1, seconds=(30, 40))
    files = discover_tuab(root)
    check_tuab_splits(files)
    d = describe(files)
    assert all(d.get(f'{s}/{c}', 0) >= 1 for s in ('train', 'eval') for c in ('normal', 'abnormal')), d
    cache = build_tuab_cache(root, tmp_path / 'cache', 'eval', progress=False)
    assert not cache.failures and summarize_cache(cache)['recordings'] == d['eval/normal'] + d['eval/abnormal']
    assert TuabWindows(cache, 4.0)[0][0].shape == (19, 1024)
    official = build_tuab_cache(root, tmp_path / 'cache23', 'eval', progress=False, montage='tuab23')
    assert not official.failures and len(official) == len(cache)  # it writes T1/T2: the official inputs are all there
    assert official.config['channels'][-4:] == ['CZ', 'PZ', 'T1', 'T2']
    assert TuabWindows(official, 4.0)[0][0].shape == (23, 1024)


OFFICIAL_FIXTURE = Path(__file__).parent / 'data' / 'eegpt_tuab'  # how it was made: its README.md


def test_the_official_filters_equal_what_the_authors_script_wrote(tmp_path):
    "filters='mne_fir' (MNE FIR at the native rate, then resampling) against make_TUAB.py's own output for one EDF."
    folder = tmp_path / 'edf' / 'train' / 'abnormal' / '01_tcp_ar'
    folder.mkdir(parents=True)
    shutil.copy(OFFICIAL_FIXTURE / 'aaaaaaaa_s001_t000.edf', folder)
    official = dict(montage='tuab23', sfreq=200.0, l_freq=0.1, h_freq=75.0, notch=50.0)
    authors = np.load(OFFICIAL_FIXTURE / 'make_TUAB_window0.npy')
    cache = build_tuab_cache(tmp_path, tmp_path / 'fir', 'train', progress=False, filters='mne_fir', **official)
    windows = TuabWindows(cache, window_s=10.0)
    assert len(windows) == 1 and cache.config['filters'] == 'mne_fir'  # 11 s at 200 Hz: one whole 10-s window
    x, y = windows[0]
    np.testing.assert_allclose(x.numpy(), authors, rtol=0, atol=1e-4)  # µV; float32 rounding of ~100 µV is ~1e-5
    assert y.item() == 1
    ours = build_tuab_cache(tmp_path, tmp_path / 'butterworth', 'train', progress=False, **official)
    assert np.abs(TuabWindows(ours, window_s=10.0)[0][0].numpy() - authors).max() > 1.0  # the other path differs
    with pytest.raises(ValueError, match='other settings'):  # a cache is never reused across filter paths
        build_tuab_cache(tmp_path, tmp_path / 'fir', 'train', progress=False, **official)
