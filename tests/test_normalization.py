"Statistics with provenance, the audit's fields on crafted caches, the gate, and the exit codes of the command line."
import json, subprocess, sys
from pathlib import Path
import numpy as np
import pytest
from scipy.signal import lfilter

from brain_go_brrr.cache import open_cache, write_cache_config, write_recording
from brain_go_brrr.normalization import (NoProvenanceWarning, NormalizationMismatch, NormStats, RunningStats,
                                         audit_cache, audit_norm, compute_norm_stats, gate_normalization, sample_windows)
from brain_go_brrr.signal import CHANNELS

CLI = [sys.executable, '-m', 'brain_go_brrr']
REFERENCE_LEGACY = {'mean': 9.385832980114282e-12, 'std': 2.124020075157719e-05}  # Sleep-EDF, volts
CONFIG = {'corpus': 'tusz', 'split': 'train', 'sfreq': 256.0, 'channels': list(CHANNELS), 'montage': 'referential',
          'unit': 'uV', 'l_freq': 0.5, 'h_freq': 120.0, 'notch': 60.0, 'data_dir': '/data/tusz', 'version': '0.1.0'}
SECONDS = (90, 75, 130)  # 4 + 2 + 8 windows of 60 s with a 10 s stride


def eeg_like(seconds, seed, sfreq=256):
    "float32 (19, T) in µV: AR(1) noise with its own amplitude (20-60 µV) and offset per channel."
    rng = np.random.default_rng(seed)
    x = lfilter([1.0], [1.0, -0.95], rng.standard_normal((19, seconds * sfreq)), axis=1)
    x = x / x.std(1, keepdims=True) * np.linspace(20, 60, 19)[:, None] + rng.normal(0, 5, (19, 1))
    return x.astype(np.float32)


def make_cache(cache_dir, signals, config=CONFIG):
    write_cache_config(cache_dir, config)
    for i, x in enumerate(signals):
        write_recording(cache_dir, f't{i:03d}', x, np.zeros(x.shape[-1], np.uint8), f's{i:03d}')
    return open_cache(cache_dir)


@pytest.fixture
def signals():
    return [eeg_like(s, seed) for seed, s in enumerate(SECONDS)]


@pytest.fixture
def cache(tmp_path, signals):
    return make_cache(tmp_path / 'tusz_train', signals)


@pytest.fixture
def zscored_cache(tmp_path, signals):
    "The incident's data: already z-scored per channel (std about 1), of another corpus, no unit."
    z = [(x - x.mean(1, keepdims=True)) / x.std(1, keepdims=True) for x in signals]
    return make_cache(tmp_path / 'tuab_zscored', z, CONFIG | {'corpus': 'tuab', 'unit': None})


# --- statistics -------------------------------------------------------------------------------

@pytest.mark.parametrize('chunk_samples', [777, 2**16])
def test_streaming_statistics_equal_the_direct_computation(cache, signals, chunk_samples):
    stats = compute_norm_stats(cache, chunk_samples)
    direct = np.concatenate(signals, axis=1).astype(np.float64)
    np.testing.assert_allclose(stats.mean, direct.mean(1), rtol=1e-11, atol=1e-9)
    np.testing.assert_allclose(stats.std, direct.std(1), rtol=1e-11)


def test_one_sample_at_a_time_equals_all_at_once(signals):
    x = signals[0][:, :3000]
    acc = RunningStats(19).update_in_chunks(x, 1)
    np.testing.assert_allclose(acc.mean, x.mean(1, dtype=np.float64), rtol=1e-11, atol=1e-9)
    np.testing.assert_allclose(acc.std, x.astype(np.float64).std(1), rtol=1e-11)
    assert (acc.count == 3000).all() and (acc.max_abs == np.abs(x).max(1)).all()


def test_streaming_statistics_are_stable_far_from_zero():
    x = (1e8 + np.random.default_rng(0).standard_normal((2, 50_000)))
    acc = RunningStats(2).update_in_chunks(x, 997)
    np.testing.assert_allclose(acc.std, x.std(1), rtol=1e-9)
    assert abs(np.sqrt((x**2).mean(1) - x.mean(1)**2) - x.std(1)).max() > 1e-3  # the one-pass formula is not


def test_statistics_file_says_where_it_came_from(cache, tmp_path):
    stats = compute_norm_stats(cache)
    d = json.loads(stats.save(tmp_path / 'stats.json').read_text())
    assert d['unit'] == 'uV' and d['channels'] == list(CHANNELS) and d['n_samples'] == 256 * sum(SECONDS)
    pv = d['provenance']
    assert (pv['corpus'], pv['split'], pv['sfreq'], pv['montage']) == ('tusz', 'train', 256.0, 'referential')
    assert (pv['l_freq'], pv['h_freq'], pv['notch'], pv['n_recordings']) == (0.5, 120.0, 60.0, 3)
    assert pv['created'].endswith('+00:00') and pv['version'] and pv['cache_dir'].endswith('tusz_train')
    back = NormStats.load(tmp_path / 'stats.json')
    assert np.array_equal(back.mean, stats.mean) and np.array_equal(back.std, stats.std) and not back.legacy


def test_legacy_scalar_file_loads_with_a_warning(tmp_path):
    (tmp_path / 'normalization.json').write_text(json.dumps(REFERENCE_LEGACY))
    with pytest.warns(NoProvenanceWarning, match='norm-stats'):
        stats = NormStats.load(tmp_path / 'normalization.json')
    assert stats.legacy and stats.n_channels is None
    assert float(stats.mean) == REFERENCE_LEGACY['mean'] and float(stats.std) == REFERENCE_LEGACY['std']
    x = np.ones((2, 19, 10), np.float32)
    np.testing.assert_allclose(stats.apply(x), (1 - REFERENCE_LEGACY['mean']) / REFERENCE_LEGACY['std'], rtol=1e-6)


def test_nonfinite_cache_is_refused_by_name(tmp_path, signals):
    signals[1][4, 100] = np.nan
    with pytest.raises(ValueError, match='t001 holds 1 non-finite'):
        compute_norm_stats(make_cache(tmp_path / 'c', signals))


def test_sample_windows_are_cached_windows_and_seeded(cache, signals):
    w = sample_windows(cache, n_windows=5, seed=3)
    assert w.shape == (5, 19, 60 * 256) and w.dtype == np.float32
    assert np.array_equal(w, sample_windows(cache, n_windows=5, seed=3))
    for x in w:  # each one is a 10 s-aligned slice of some recording
        assert any(np.array_equal(x, s[:, k:k + 60 * 256]) for s in signals for k in range(0, s.shape[1] - 60 * 256 + 1, 2560))
    assert len(sample_windows(cache, n_windows=1000)) == 4 + 2 + 8


# --- the audit, field by field ------------------------------------------------------------------

def test_same_cache_statistics_are_ok(cache):
    r = audit_cache(compute_norm_stats(cache), cache)
    assert r.verdict == 'ok' and r.reasons == [] and abs(r.amplification - 1) < 0.1 and abs(r.mean_shift) < 0.5
    assert not (r.unit_mismatch or r.provenance_mismatch or r.nonfinite or r.fp16_overflow_risk)


def test_reference_incident_is_a_mismatch_near_47000(zscored_cache, tmp_path):
    (tmp_path / 'normalization.json').write_text(json.dumps(REFERENCE_LEGACY))
    with pytest.warns(NoProvenanceWarning):
        r = audit_cache(tmp_path / 'normalization.json', zscored_cache)
    assert r.verdict == 'mismatch' and abs(r.amplification / 47_000 - 1) < 0.02
    assert r.fp16_overflow_risk and r.max_abs > 65504 and not r.unit_mismatch and not r.nonfinite
    assert any('already z-scored' in s and 'norm-stats' in s for s in r.reasons)


def test_mean_shift(cache):
    good = compute_norm_stats(cache)
    shifted = NormStats(good.mean + 2 * good.std, good.std, good.unit, good.channels, provenance=good.provenance)
    r = audit_cache(shifted, cache)
    assert r.verdict == 'mismatch' and abs(r.mean_shift + 2) < 0.1 and 0.5 < r.amplification < 2.5
    assert len(r.reasons) == 1 and 'would have mean -1.99' in r.reasons[0]


def test_unit_mismatch_1e6(cache):
    good = compute_norm_stats(cache)
    volts = NormStats(good.mean * 1e-6, good.std * 1e-6)  # the same statistics in volts, no provenance to tell
    r = audit_cache(volts, cache)
    assert r.verdict == 'mismatch' and r.unit_mismatch and abs(np.log10(r.scale_ratio) - 6) < 0.01
    assert any('1e6' in s for s in r.reasons)
    declared = NormStats(good.mean, good.std, 'V', good.channels, provenance=good.provenance)
    r = audit_cache(declared, cache)
    assert r.unit_mismatch and r.verdict == 'mismatch' and abs(r.amplification - 1) < 0.1


def test_provenance_from_another_corpus(cache):
    good = compute_norm_stats(cache)
    other = NormStats(good.mean, good.std, good.unit, good.channels, provenance=good.provenance | {'corpus': 'sleep-edf'})
    r = audit_cache(other, cache)
    assert r.verdict == 'mismatch' and r.provenance_mismatch and not r.unit_mismatch
    assert r.provenance_differences == {'corpus': ['sleep-edf', 'tusz']} and any('sleep-edf' in s for s in r.reasons)
    dev = NormStats(good.mean, good.std, good.unit, good.channels, provenance=good.provenance | {'split': 'dev'})
    assert audit_cache(dev, cache).verdict == 'ok'  # train statistics normalise dev and eval: not a mismatch


def test_nonfinite_values_in_the_data_or_the_statistics(cache):
    good = compute_norm_stats(cache)
    windows = sample_windows(cache, 4)
    windows[1, 7, :5] = np.inf
    r = audit_norm(good, windows, cache.config)
    assert r.verdict == 'mismatch' and r.nonfinite and any('5 non-finite' in s and 'P4' in s for s in r.reasons)
    nan_stats = NormStats(np.where(np.arange(19) == 2, np.nan, good.mean), good.std, good.unit, good.channels)
    r = audit_norm(nan_stats, sample_windows(cache, 4), cache.config)
    assert r.nonfinite and any('F3' in s for s in r.reasons)


def test_fp16_risk_depends_on_the_training_precision(cache):
    good = compute_norm_stats(cache)
    tight = NormStats(good.mean, good.std / 300, good.unit, good.channels, provenance=good.provenance)
    assert audit_cache(tight, cache, precision='fp16').fp16_overflow_risk
    bf16 = audit_cache(tight, cache, precision='bf16')  # still an amplification mismatch, but no fp16 reason
    assert bf16.fp16_overflow_risk and not any('float16' in s for s in bf16.reasons) and bf16.notes


def test_report_is_json_safe(cache):
    r = audit_norm(NormStats(np.zeros(18), np.ones(18)), sample_windows(cache, 2))  # wrong channel count
    d = json.loads(json.dumps(r.to_dict(), allow_nan=False))
    assert d['verdict'] == 'mismatch' and d['amplification'] is None and '18 channels' in d['reasons'][0]


# --- the gate -----------------------------------------------------------------------------------

def test_gate_stops_a_mismatch_unless_overridden(cache, zscored_cache):
    log = []
    assert gate_normalization(compute_norm_stats(cache), cache.root, log=log.append).verdict == 'ok'
    with pytest.raises(NormalizationMismatch, match='already z-scored') as e:
        gate_normalization(NormStats(**REFERENCE_LEGACY), zscored_cache, log=log.append)
    assert e.value.report.amplification > 40_000
    r = gate_normalization(NormStats(**REFERENCE_LEGACY), zscored_cache, override=True, log=log.append)
    assert r.overridden and r.to_dict()['overridden'] is True and 'OVERRIDDEN' in log[-1]


# --- command line ---------------------------------------------------------------------------------

def run(*args):
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=120)


def test_cli_exit_codes(cache, zscored_cache, tmp_path):
    out = tmp_path / 'stats.json'
    p = run('norm-stats', '--cache-dir', cache.root, '--out', out)
    assert p.returncode == 0, p.stderr
    assert json.loads(out.read_text())['provenance']['corpus'] == 'tusz'

    p = run('audit-norm', '--stats', out, '--cache-dir', cache.root, '--json')
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout)
    assert report['verdict'] == 'ok' and abs(report['amplification'] - 1) < 0.1
    assert {'verdict', 'amplification', 'mean_shift', 'unit_mismatch', 'provenance_mismatch', 'nonfinite',
            'fp16_overflow_risk', 'reasons'} <= report.keys()

    (tmp_path / 'normalization.json').write_text(json.dumps(REFERENCE_LEGACY))
    p = run('audit-norm', '--stats', tmp_path / 'normalization.json', '--cache-dir', zscored_cache.root, '--json')
    assert p.returncode == 1, p.stderr
    report = json.loads(p.stdout)
    assert report['verdict'] == 'mismatch' and 40_000 < report['amplification'] < 55_000 and report['reasons']
    assert 'NoProvenanceWarning' in p.stderr

    assert run('audit-norm', '--stats', tmp_path / 'missing.json', '--cache-dir', cache.root).returncode == 1
    assert run('norm-stats', '--cache-dir', tmp_path / 'not_a_cache', '--out', out).returncode == 1
