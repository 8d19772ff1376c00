"The cache build on bad input, its command line, and a build killed with SIGKILL then resumed."
import json, os, signal, subprocess, sys, time
from pathlib import Path
import numpy as np
import pytest

from brain_go_brrr.cache import build_cache, open_cache, scan_cache
from brain_go_brrr.signal import CHANNELS
from brain_go_brrr.synth import synth_tusz

CLI = [sys.executable, '-m', 'brain_go_brrr']


def _edf_header_field_offset(edf: Path, field: int) -> tuple[int, int]:
    "Offset of the per-signal header field number `field` (0 = label ... 5 = physical max) and ns."
    ns = int(edf.read_bytes()[252:256])
    widths = [16, 80, 8, 8, 8, 8]
    return 256 + ns * sum(widths[:field]), ns


def _corrupt(edf: Path, how: str) -> None:
    b = bytearray(edf.read_bytes())
    if how == 'truncated':
        del b[len(b) // 2:]
    elif how == 'header':
        b[:256] = b'garbage!' * 32
    elif how == 'nonfinite':  # a physical maximum of inf makes MNE return NaN samples
        off, _ = _edf_header_field_offset(edf, 5)
        b[off:off + 8] = b'inf     '
    edf.write_bytes(bytes(b))


BAD = {
    'truncated': 'truncated',
    'header': 'cannot read the EDF header',
    'nonfinite': 'NaN/Inf samples',
    'too_few_channels': 'missing channel(s)',
    'flat': 'flat channel(s)',
    'annotation_past_end': 'past the',
    'missing_annotation': 'annotation file missing',
}


@pytest.mark.parametrize('case', list(BAD))
def test_bad_input_is_recorded_and_the_build_goes_on(tmp_path, write_edf, case):
    root = tmp_path / 'tusz'
    write_edf(root, 'train', 'goodgood', seed=1)
    kw = {}
    if case == 'too_few_channels': kw['labels'] = [f'EEG {c}-REF' for c in CHANNELS[:15]]
    if case == 'missing_annotation': kw['annotation'] = False
    if case == 'annotation_past_end': kw['seizure'] = (100.0, 200.0)
    bad = write_edf(root, 'train', 'badbadba', seed=2, **kw)
    if case in ('truncated', 'header', 'nonfinite'): _corrupt(bad, case)
    if case == 'annotation_past_end':  # the header agrees with the rows: only the EDF's length contradicts them
        p = bad.with_suffix('.csv_bi'); p.write_text(p.read_text().replace('duration = 120.0000', 'duration = 300.0000'))
        assert 'TERM,100.0000,200.0000,seiz' in p.read_text()
    if case == 'flat':
        import mne
        labels = [f'EEG {c}-REF' for c in CHANNELS]
        data = np.random.default_rng(0).normal(0, 20e-6, (19, 256 * 120)); data[3] = 0
        mne.export.export_raw(bad, mne.io.RawArray(data, mne.create_info(labels, 256.0, 'eeg'), verbose='error'),
                              fmt='edf', overwrite=True, verbose='error')
    scan = build_cache(root, tmp_path / 'cache', 'train', progress=False)
    assert scan['recordings'] == 1 and scan['failed'] == 1
    (failure,) = open_cache(tmp_path / 'cache').failures
    assert BAD[case] in failure['reason'] and 'badbadba' in failure['reason'], failure


def test_cli_build_scan_clean(tmp_path):
    corpus = synth_tusz(tmp_path / 'tusz', subjects=6, seed=3)
    cache = tmp_path / 'cache'
    r = subprocess.run(CLI + ['build-cache', '--data-dir', corpus, '--cache-dir', cache, '--split', 'train', '--workers', '2'],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    scan = json.loads(subprocess.run(CLI + ['scan-cache', '--cache-dir', cache, '--json'], capture_output=True, text=True, check=True).stdout)
    for key in ('recordings', 'windows', 'full', 'partial', 'none', 'failed', 'hours', 'seizure_seconds'):
        assert key in scan
    assert scan['recordings'] > 0 and scan['windows'] == scan['full'] + scan['partial'] + scan['none']
    table = subprocess.run(CLI + ['scan-cache', '--cache-dir', cache], capture_output=True, text=True, check=True).stdout
    assert 'seizure_seconds' in table and not table.startswith('{')
    outside = tmp_path / 'keep.txt'; outside.write_text('not the cache')
    assert subprocess.run(CLI + ['clean-cache', '--cache-dir', cache]).returncode == 0
    assert not cache.exists() and outside.exists() and corpus.exists()
    assert subprocess.run(CLI + ['clean-cache', '--cache-dir', corpus], capture_output=True).returncode != 0  # not a cache
    assert (corpus / 'edf').exists()


def _arrays(cache_dir):
    c = open_cache(cache_dir)
    return {r.token: (np.array(c.signal(r)), np.array(c.labels(r))) for r in c.recordings}


# A build whose pool workers stop once the cache holds `target` recordings (argv[1]): the test kills it then, with
# `target` or `target + 1` recordings whole and the other worker's maybe half-written, however loaded the machine
# (it waits on the recordings the build writes, not on a clock).
STOPPING_BUILD = ("import sys, threading\nfrom pathlib import Path\nimport brain_go_brrr.cache as C\n"
                  "from brain_go_brrr.cli import main\nreal, target = C.cache_recording, int(sys.argv[1])\n"
                  "def stopping(f, cache_dir, *a, **kw):\n    done = real(f, cache_dir, *a, **kw)\n"
                  "    if len(list(Path(cache_dir, 'recordings').glob('*.json'))) >= target: threading.Event().wait()\n"
                  "    return done\n"
                  "C.cache_recording = stopping\nmain(sys.argv[2:])")


def cached(cache: Path) -> int: return len(list((cache / 'recordings').glob('*.json')))


def test_killed_build_resumes_to_the_same_cache(tmp_path):
    corpus = synth_tusz(tmp_path / 'tusz', subjects=9, seed=4)
    reference = tmp_path / 'reference'
    build_cache(corpus, reference, 'train', progress=False)
    expected = _arrays(reference)
    assert len(expected) == 9
    cache = tmp_path / 'cache'
    args = ['build-cache', '--data-dir', str(corpus), '--cache-dir', str(cache), '--split', 'train', '--workers', '2']
    for target in (1, 3, 5, 7):  # SIGKILL the whole process group at several moments of the build
        p = subprocess.Popen([sys.executable, '-c', STOPPING_BUILD, str(target), *args], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            give_up = time.monotonic() + 1800  # a hang guard only: the workers wait forever once `target` are cached
            while cached(cache) < target:
                assert p.poll() is None and time.monotonic() < give_up, f'stopped before {target} recordings'
                time.sleep(0.05)
            assert p.poll() is None  # at most target + 1 of the 9 are done: the build is still running when killed
        finally:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        assert target <= cached(cache) <= target + 1
    assert subprocess.run(CLI + args, capture_output=True).returncode == 0
    got = _arrays(cache)
    assert sorted(got) == sorted(expected)  # every recording exactly once
    for token, (x, y) in expected.items():
        np.testing.assert_array_equal(got[token][0], x); np.testing.assert_array_equal(got[token][1], y)
    assert not list(cache.glob('*/.*.tmp'))
    assert scan_cache(cache) == scan_cache(reference)
