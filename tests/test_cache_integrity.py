"Issue #12: a cache that follows its corpus, refuses what it cannot vouch for, and survives `kill -9` of a parallel build."
import json, os, shutil, signal, subprocess, sys, time
from pathlib import Path
import numpy as np
import pytest

from brain_go_brrr import cache as C
from brain_go_brrr.cache import build_cache, clean_cache, open_cache, scan_cache

CLI = [sys.executable, '-m', 'brain_go_brrr']


def _tokens(cache_dir): return {r.token: r for r in open_cache(cache_dir).recordings}


def _remove_recording(edf: Path) -> None:
    for p in (edf, edf.with_suffix('.csv_bi'), edf.with_suffix('.csv')): p.unlink(missing_ok=True)


# 1. a rebuild refreshes what changed and drops what is gone; the split check runs on the caches
def test_rebuild_drops_a_recording_whose_edf_is_gone(tmp_path, write_edf):
    root, cache = tmp_path / 'tusz', tmp_path / 'cache'
    write_edf(root, 'train', 'keepkeep', seed=1)
    gone = write_edf(root, 'train', 'gonegone', seed=2)
    build_cache(root, cache, 'train', progress=False)
    _remove_recording(gone)
    assert build_cache(root, cache, 'train', progress=False)['recordings'] == 1
    assert set(_tokens(cache)) == {'keepkeep_s001_t000'}
    assert not list((cache / 'recordings').glob('gonegone*'))


@pytest.mark.parametrize('edit', ['annotation', 'signal'])
def test_rebuild_refreshes_an_edited_source(tmp_path, write_edf, edit):
    root, cache = tmp_path / 'tusz', tmp_path / 'cache'
    edf = write_edf(root, 'train', 'editedit', seed=1, seizure=(30.0, 55.0))
    build_cache(root, cache, 'train', progress=False)
    before = np.array(open_cache(cache).signal('editedit_s001_t000'))
    if edit == 'annotation':  # the seizure moves: same file size, other labels
        p = edf.with_suffix('.csv_bi'); p.write_text(p.read_text().replace('30.0000', '60.0000').replace('55.0000', '90.0000'))
    else:
        time.sleep(0.01); write_edf(root, 'train', 'editedit', seed=7, seizure=(30.0, 55.0))
    build_cache(root, cache, 'train', progress=False)
    rec = _tokens(cache)['editedit_s001_t000']
    labels = np.array(open_cache(cache).labels(rec))
    if edit == 'annotation':
        assert rec.seizure_samples == 30 * 256 and labels[70 * 256] == 1 and labels[40 * 256] == 0
    else:
        assert not np.array_equal(np.array(open_cache(cache).signal(rec)), before)


def test_a_subject_moved_to_dev_leaves_the_train_cache(tmp_path, write_edf):
    root = tmp_path / 'tusz'
    write_edf(root, 'train', 'stayhere', seed=1)
    write_edf(root, 'train', 'movesdev', seed=2)
    write_edf(root, 'dev', 'devsubjt', seed=3)
    train, dev = tmp_path / 'cache' / 'train', tmp_path / 'cache' / 'dev'
    build_cache(root, train, 'train', progress=False)
    shutil.move(root / 'edf' / 'train' / 'movesdev', root / 'edf' / 'dev' / 'movesdev')
    build_cache(root, dev, 'dev', progress=False)
    from brain_go_brrr.cache import check_cache_splits
    with pytest.raises(ValueError, match='movesdev in .*train and .*dev'):
        check_cache_splits([train, dev])  # the stale train cache still holds it: a leak training must not start with
    build_cache(root, train, 'train', progress=False)
    assert {r.subject for r in open_cache(train).recordings} == {'stayhere'}
    check_cache_splits([train, dev])


# 2. statistics beside a cache do not outlive the content they describe
def test_norm_stats_beside_a_cache_go_when_the_cache_changes(tmp_path, write_edf):
    from brain_go_brrr.normalization import compute_norm_stats
    root, cache = tmp_path / 'tusz', tmp_path / 'cache'
    write_edf(root, 'train', 'aaaaaaaa', seed=1)
    gone = write_edf(root, 'train', 'bbbbbbbb', seed=2)
    build_cache(root, cache, 'train', progress=False)
    fingerprint = open_cache(cache).fingerprint
    compute_norm_stats(cache).save(cache / C.STATS_FILE)
    build_cache(root, cache, 'train', progress=False)
    assert (cache / C.STATS_FILE).exists() and open_cache(cache).fingerprint == fingerprint  # nothing changed: kept
    _remove_recording(gone)
    build_cache(root, cache, 'train', progress=False)
    assert open_cache(cache).fingerprint != fingerprint
    assert not (cache / C.STATS_FILE).exists()  # training computes them again from what is cached now


# 3. a configuration change rebuilds or refuses, even with cache.json deleted
@pytest.mark.parametrize('change', [dict(sfreq=200.0), dict(montage='tcp')])
def test_a_deleted_cache_json_does_not_let_other_settings_in(tmp_path, write_edf, change):
    root, cache = tmp_path / 'tusz', tmp_path / 'cache'
    write_edf(root, 'train', 'aaaaaaaa', seed=1)
    build_cache(root, cache, 'train', progress=False)
    (cache / 'cache.json').unlink()
    with pytest.raises(ValueError, match=f'{next(iter(change))}: .* there, .* now.*clean-cache'):
        build_cache(root, cache, 'train', progress=False, **change)
    assert not (cache / 'cache.json').exists()  # nothing written over the old arrays
    build_cache(root, cache, 'train', progress=False)  # the same settings: resumes, cache.json written again
    assert open_cache(cache).config['sfreq'] == 256.0
    (cache / 'cache.json').unlink()
    assert clean_cache(cache) == [] and not cache.exists()  # a cache without cache.json can still be removed


# 4. a checksum per array, checked by scan-cache --verify and when training opens the cache
def test_zeroed_bytes_are_found_by_verify_and_redone_by_a_verifying_build(tmp_path, write_edf):
    root, cache = tmp_path / 'tusz', tmp_path / 'cache'
    write_edf(root, 'train', 'aaaaaaaa', seed=1)
    build_cache(root, cache, 'train', progress=False)
    from brain_go_brrr.cache import verify_cache
    assert subprocess.run(CLI + ['scan-cache', '--cache-dir', cache, '--verify'], capture_output=True).returncode == 0
    p = cache / 'recordings' / 'aaaaaaaa_s001_t000.signal.npy'
    with open(p, 'r+b') as f: f.seek(p.stat().st_size // 2); f.write(bytes(4096))
    with pytest.raises(ValueError, match=r'(?s)aaaaaaaa_s001_t000\.signal\.npy: blake2b differs.*build-cache .*--verify'):
        verify_cache(cache)
    r = subprocess.run(CLI + ['scan-cache', '--cache-dir', cache, '--verify'], capture_output=True, text=True)
    assert r.returncode != 0 and str(p) in r.stderr, r.stderr
    build_cache(root, cache, 'train', progress=False, verify=True)
    verify_cache(cache)


def test_a_truncated_array_is_named_and_redone(tmp_path, write_edf):
    from brain_go_brrr.normalization import compute_norm_stats
    root, cache = tmp_path / 'tusz', tmp_path / 'cache'
    write_edf(root, 'train', 'aaaaaaaa', seed=1)
    build_cache(root, cache, 'train', progress=False)
    expected = np.array(open_cache(cache).signal('aaaaaaaa_s001_t000'))
    p = cache / 'recordings' / 'aaaaaaaa_s001_t000.signal.npy'
    p.write_bytes(p.read_bytes()[:p.stat().st_size // 2])
    with pytest.raises(ValueError, match=r'aaaaaaaa_s001_t000\.signal\.npy: cannot be read.*build-cache.*clean-cache'):
        compute_norm_stats(cache)
    r = subprocess.run(CLI + ['scan-cache', '--cache-dir', cache, '--verify'], capture_output=True, text=True)
    assert r.returncode != 0 and 'truncated' in r.stderr and str(p) in r.stderr, r.stderr
    build_cache(root, cache, 'train', progress=False)  # a size that differs from the manifest is redone on any build
    np.testing.assert_array_equal(np.array(open_cache(cache).signal('aaaaaaaa_s001_t000')), expected)


# 5. one file name under two subjects
def test_one_file_name_under_two_subjects_is_refused(tmp_path, write_edf):
    root, cache = tmp_path / 'plain', tmp_path / 'cache'
    for i, subject in enumerate(('alice', 'bob')):
        edf = write_edf(root, 'train', subject, seed=i)
        ann = edf.with_suffix('.csv_bi')
        ann.with_name('rec.csv_bi').write_text(ann.read_text().replace(f'bname = {edf.stem}', 'bname = rec'))
        edf.rename(edf.with_name('rec.edf')); ann.unlink()
    with pytest.raises(ValueError, match=r'alice/.*rec\.edf and .*bob/.*rec\.edf.*rename one'):
        build_cache(root, cache, 'train', progress=False)


# 6. kill -9 of a parallel build: the lock ends with its owner, and a resumed build finishes
# A build whose pool workers block once their first recording is written: it is certainly still running, with a
# finished recording on disk, when it is killed, however loaded the machine (no race against wall-clock polling).
STALLED_BUILD = ("import sys, threading\nimport brain_go_brrr.cache as C\nfrom brain_go_brrr.cli import main\n"
                 "real = C.cache_recording\n"
                 "def stalled(*a, **kw):\n    real(*a, **kw)\n    threading.Event().wait()\n"
                 "C.cache_recording = stalled\nmain(sys.argv[1:])")


def live_members(group: int) -> list[int]:
    "Processes of a process group that are not zombies (a zombie still answers `kill(pid, 0)` until it is reaped)."
    members = []
    for stat in Path('/proc').glob('[0-9]*/stat'):
        try: fields = stat.read_text().rsplit(')', 1)[1].split()
        except OSError: continue              # ended while we looked
        if int(fields[2]) == group and fields[0] != 'Z': members.append(int(stat.parent.name))
    return members


def test_kill_9_of_a_parallel_build_leaves_no_lock_behind(tmp_path, write_edf):
    root, cache = tmp_path / 'tusz', tmp_path / 'cache'
    for i in range(12): write_edf(root, 'train', f'subj{i:04d}', seed=i, seconds=240, seizure=(30.0, 55.0))
    args = ['build-cache', '--data-dir', str(root), '--cache-dir', str(cache), '--split', 'train', '--workers', '2']
    log = tmp_path / 'stalled.stderr'
    with open(log, 'w') as err: p = subprocess.Popen([sys.executable, '-c', STALLED_BUILD, *args],
                                                      stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    try:
        give_up = time.monotonic() + 1800  # a hang guard only: the workers wait forever after their first recording
        while not list((cache / 'recordings').glob('*.json')):
            assert p.poll() is None and time.monotonic() < give_up, log.read_text()
            time.sleep(0.05)
        os.kill(p.pid, signal.SIGKILL)  # the build alone, as `kill -9 PID` or the OOM killer do: its pool workers are not
        p.wait()
        r = subprocess.run(CLI + args, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr
        assert scan_cache(cache)['recordings'] == 12
        # no worker of the killed build lives on: PR_SET_PDEATHSIG killed them with their parent, long before now
        assert live_members(p.pid) == []
    finally:
        try: os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError: pass


# 7. exit status
def test_build_cache_exits_nonzero_when_every_recording_failed(tmp_path, write_edf):
    root, cache = tmp_path / 'tusz', tmp_path / 'cache'
    write_edf(root, 'train', 'aaaaaaaa', annotation=False)
    write_edf(root, 'train', 'bbbbbbbb', annotation=False)
    r = subprocess.run(CLI + ['build-cache', '--data-dir', root, '--cache-dir', cache, '--split', 'train'],
                       capture_output=True, text=True)
    assert r.returncode != 0 and 'every recording failed' in r.stderr, r.stderr
    assert json.loads(subprocess.run(CLI + ['scan-cache', '--cache-dir', cache, '--json'], capture_output=True,
                                     text=True, check=True).stdout)['failed'] == 2
