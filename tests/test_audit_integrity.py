"""Issue #12: the audit checks every sampled recording and channel, not only the whole sample, so one recording or a
few channels in another unit cannot hide behind a pooled amplification near 1."""
import json
import numpy as np
import pytest

from brain_go_brrr.normalization import (NormalizationMismatch, NormStats, audit_cache, compute_norm_stats,
                                         gate_normalization, sample_windows_with_tokens)
from brain_go_brrr.signal import CHANNELS
from test_normalization import eeg_like, make_cache


@pytest.fixture
def five(tmp_path):
    "Five recordings of 90 s (4 windows each) in µV."
    return [eeg_like(90, seed) for seed in range(5)]


def test_one_recording_1e6_too_large_is_a_mismatch_naming_it(tmp_path, five):
    five[2] = five[2] * 1e6  # the incident's recording: volts * 1e6 too large, among four good ones
    cache = make_cache(tmp_path / 'mixed', five)
    stats = compute_norm_stats(cache)
    assert stats.std.min() > 1e6  # the statistics are the bad recording's
    r = audit_cache(stats, cache)
    assert 0.5 <= r.amplification <= 2  # the whole sample looks fine: what the audit said before
    assert r.verdict == 'mismatch' and 't002' not in r.worst_recordings
    assert set(r.worst_recordings) == {'t000', 't001', 't003', 't004'}
    amp = dict(zip(r.per_recording['recordings'], r.per_recording['amplification']))
    assert max(v for k, v in amp.items() if k != 't002') < 1e-4 and 0.5 < amp['t002'] < 3
    assert any('t002 stands out' in s and '1e6' in s and 'norm-stats' in s for s in r.reasons)
    with pytest.raises(NormalizationMismatch, match='t002'):
        gate_normalization(stats, cache, log=lambda s: None)


@pytest.mark.parametrize('factor', [50, 1e3, 1e6, 1 / 50, np.inf])
def test_a_few_channels_off_by_a_factor_are_a_mismatch_not_a_note(tmp_path, five, factor):
    cache = make_cache(tmp_path / 'c', five)
    good = compute_norm_stats(cache)
    off = np.isin(CHANNELS, ['F3', 'O1', 'CZ'])
    std = np.where(off, good.std * factor, good.std)
    (tmp_path / 'stats.json').write_text(json.dumps(NormStats(good.mean, std, good.unit, good.channels,
                                                              provenance=good.provenance).to_dict()))
    r = audit_cache(NormStats.load(tmp_path / 'stats.json'), cache)  # Infinity goes through the file as JSON allows
    assert r.verdict == 'mismatch' and sorted(r.worst_channels) == ['CZ', 'F3', 'O1']
    assert any('F3' in s and 'O1' in s and 'CZ' in s for s in r.reasons)
    assert r.nonfinite == (factor == np.inf)


def test_channels_slightly_off_stay_a_note(tmp_path, five):
    cache = make_cache(tmp_path / 'c', five)
    good = compute_norm_stats(cache)
    std = np.where(np.isin(CHANNELS, ['F3']), good.std * 3, good.std)
    r = audit_cache(NormStats(good.mean, std, good.unit, good.channels, provenance=good.provenance), cache)
    assert r.verdict == 'ok' and r.worst_channels == [] and any('F3' in s for s in r.notes)


def test_same_cache_statistics_are_ok_per_recording_and_channel(tmp_path, five):
    cache = make_cache(tmp_path / 'c', five)
    r = audit_cache(compute_norm_stats(cache), cache)
    assert r.verdict == 'ok' and r.worst_recordings == [] and r.worst_channels == [] and r.notes == []
    assert r.per_recording['recordings'] == [f't{i:03d}' for i in range(5)] and r.per_recording['n_windows'] == [4] * 5
    assert all(0.8 < a < 1.25 for a in r.per_recording['amplification'])
    d = json.loads(json.dumps(r.to_dict(), allow_nan=False))
    assert {'verdict', 'amplification', 'mean_shift', 'unit_mismatch', 'provenance_mismatch', 'nonfinite',
            'fp16_overflow_risk', 'reasons', 'per_recording', 'worst_recordings', 'worst_channels'} <= d.keys()


def test_the_sample_holds_every_recording_when_it_can(tmp_path):
    cache = make_cache(tmp_path / 'c', [eeg_like(600, 0)] + [eeg_like(60, s) for s in range(1, 5)])  # 55 + 4 windows
    for seed in range(5):
        windows, tokens = sample_windows_with_tokens(cache, n_windows=5, seed=seed)
        assert sorted(tokens) == [f't{i:03d}' for i in range(5)] and len(windows) == 5
    windows, tokens = sample_windows_with_tokens(cache, n_windows=3)
    assert len(set(tokens)) == 3


# issue #26: statistics that divide by zero or by a non-finite number are a mismatch, and odd files one line
@pytest.mark.parametrize('bad', [0.0, np.nan, np.inf, -1.0])
def test_a_zero_or_non_finite_std_is_a_mismatch(tmp_path, five, bad):
    cache = make_cache(tmp_path / 'c', five)
    good = compute_norm_stats(cache)
    for std in (np.where(np.arange(len(CHANNELS)) == 4, bad, good.std), np.full(len(CHANNELS), bad)):
        stats = NormStats(good.mean, std, good.unit, good.channels, good.n_samples, good.provenance)
        r = audit_cache(stats, cache)
        assert r.verdict == 'mismatch' and any('std' in s and 'not > 0' in s for s in r.reasons), r.reasons


def test_a_zero_std_on_disk_fails_audit_norm(tmp_path, five):
    import subprocess, sys
    cache = make_cache(tmp_path / 'c', five)
    d = compute_norm_stats(cache).to_dict()
    d['std'] = [0.0] * len(d['std'])
    (tmp_path / 's.json').write_text(json.dumps(d))
    r = subprocess.run([sys.executable, '-m', 'brain_go_brrr', 'audit-norm', '--stats', str(tmp_path / 's.json'),
                        '--cache-dir', str(cache.root)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and 'mismatch' in r.stdout + r.stderr, (r.stdout, r.stderr)


@pytest.mark.parametrize('field, value', [('mean', {'FP1': 1.0}), ('std', 'one'), ('mean', [[1.0]]), ('std', None),
                                          ('mean', ['a'] * 19), ('std', True)])
def test_a_statistics_file_with_a_malformed_field_is_one_line_naming_it(tmp_path, five, field, value):
    cache = make_cache(tmp_path / 'c', five)
    d = compute_norm_stats(cache).to_dict()
    d[field] = value
    path = tmp_path / 's.json'
    path.write_text(json.dumps(d))
    with pytest.raises(ValueError, match=rf'{path}: {field} must be'):
        NormStats.load(path)
