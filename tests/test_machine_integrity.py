"""Issue #26: when the machine fails, not the data. A full disk, an unwritable folder, read-only storage and
symlinked folders are met loudly and early, never as a smaller corpus."""
import json, os, re, resource, signal, subprocess, sys
from contextlib import contextmanager
from pathlib import Path
import numpy as np
import pytest

from brain_go_brrr.cache import build_cache, open_cache
from brain_go_brrr.normalization import NormStats

CLI = [sys.executable, '-m', 'brain_go_brrr']

# what `ulimit -f` does, with SIGXFSZ ignored so that a write past the limit returns EFBIG instead of killing
LIMITED = ('import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); '
           'resource.setrlimit(resource.RLIMIT_FSIZE, ({0}, resource.getrlimit(resource.RLIMIT_FSIZE)[1])); '
           'from brain_go_brrr.cli import main; sys.exit(main(sys.argv[1:]))')


def run_limited(limit: int, *args):
    "The command line with every file it writes limited to `limit` bytes."
    return subprocess.run([sys.executable, '-c', LIMITED.format(limit), *map(str, args)], capture_output=True,
                          text=True, timeout=600)


@contextmanager
def file_size_limit(n: int):
    "This process's files limited to `n` bytes while inside (the soft limit only, so it can be raised back)."
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (n, hard))
    try: yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


def temporaries(folder: Path) -> list[Path]: return [p for p in folder.rglob('*') if '.tmp' in p.name]


# 1. a full disk stops the build, naming the file; it never becomes a smaller corpus
def test_a_full_disk_stops_the_cache_build_instead_of_skipping_recordings(tmp_path, write_edf):
    root, cache = tmp_path / 'tusz', tmp_path / 'cache'
    for i in range(3): write_edf(root, 'train', f'subj{i:04d}', seed=i, seconds=60, seizure=(10.0, 20.0))
    r = run_limited(200_000, 'build-cache', '--data-dir', root, '--cache-dir', cache)  # a signal array is 1.2 MB
    assert r.returncode == 1, r.stderr
    line = next(l for l in r.stderr.splitlines() if l.startswith('build-cache: '))
    assert 'Traceback' not in r.stderr and '.signal.npy: cannot write' in line, r.stderr
    assert 'run it again' in line, line
    assert 'skipped' not in r.stderr  # the recording is not to blame
    assert temporaries(cache) == []
    assert list((cache / 'failed').glob('*.json')) == []  # nothing recorded as a bad recording
    assert list((cache / 'recordings').glob('*.npy')) == []  # no array without its entry
    # with the space back, the build completes
    assert build_cache(root, cache, 'train', progress=False)['recordings'] == 3


def test_a_bad_recording_is_still_skipped_and_recorded(tmp_path, write_edf):
    root, cache = tmp_path / 'tusz', tmp_path / 'cache'
    write_edf(root, 'train', 'goodgood', seed=1, seconds=60, seizure=(10.0, 20.0))
    write_edf(root, 'train', 'nocsvbii', seed=2, seconds=60, annotation=False)
    scan = build_cache(root, cache, 'train', progress=False)
    assert (scan['recordings'], scan['failed']) == (1, 1)


def test_a_full_disk_while_saving_statistics_names_the_file_and_leaves_nothing(tmp_path):
    stats = NormStats(np.zeros(19), np.ones(19), 'uV', [f'c{i}' for i in range(19)], 10, {'corpus': 'x' * 4000})
    with file_size_limit(1000), pytest.raises(OSError, match=r'stats\.json: cannot write .*File too large'):
        stats.save(tmp_path / 'stats.json')
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_while_writing_a_runs_files_names_the_file_and_leaves_nothing(tmp_path):
    from brain_go_brrr.params import load_params
    from brain_go_brrr.reporting import write_run
    p = load_params(None, output_dir=str(tmp_path), run_name='r')
    p.run_dir.mkdir()
    with file_size_limit(100), pytest.raises(OSError, match=r'params\.yaml: cannot write .*File too large'):
        write_run(p, {'history': list(range(1000))})
    assert list(p.run_dir.iterdir()) == []


def without_root_override():
    "Subprocess start-up: permission bits bind even root (CAP_DAC_OVERRIDE leaves the bounding set before exec)."
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(24, 1, 0, 0, 0)  # PR_CAPBSET_DROP; fails harmlessly for a normal user


def run_without_override(*args):
    return subprocess.run(CLI + list(map(str, args)), capture_output=True, text=True, timeout=600,
                          preexec_fn=without_root_override)


@pytest.fixture
def read_only(tmp_path):
    "A read-only folder (made writable again afterwards, so pytest can remove it)."
    d = tmp_path / 'read_only'
    d.mkdir()
    d.chmod(0o555)
    probe = subprocess.run([sys.executable, '-c', f'open({str(d / "probe")!r}, "w")'], capture_output=True,
                           preexec_fn=without_root_override)
    d.chmod(0o755)
    if probe.returncode == 0: pytest.skip('permission bits do not bind here (root keeps CAP_DAC_OVERRIDE)')
    yield d
    for p in (d, *d.rglob('*')):
        if p.is_dir() and not p.is_symlink(): p.chmod(0o755)


# 2. an unwritable output folder is found before any work
def test_a_read_only_run_folder_stops_training_before_any_work(tmp_path, read_only):
    cache = tmp_path / 'cache'
    (read_only / 'r').mkdir()
    read_only.chmod(0o555), (read_only / 'r').chmod(0o555)
    r = run_without_override('train', '-p', f'output_dir={read_only}', '-p', 'run_name=r', '-p', f'cache_dir={cache}',
                             '-p', f'data_dir={tmp_path / "corpus"}')
    assert r.returncode == 1 and 'Traceback' not in r.stderr, r.stderr
    assert f'{read_only / "r"}: cannot write (Permission denied)' in r.stderr, r.stderr
    assert not cache.exists()  # no cache built, no epoch trained


# 3. a complete cache is read from read-only storage: the lock only when writing
def _make_read_only(folder: Path) -> None:
    for p in (folder, *folder.rglob('*')): p.chmod(0o555 if p.is_dir() else 0o444)


def test_a_complete_cache_on_read_only_storage_is_trained_from(tmp_path, write_edf, read_only):
    from conftest import tiny
    from brain_go_brrr.train import preflight
    root, cache = tmp_path / 'tusz', read_only / 'cache'
    for i, split in enumerate(('train', 'train', 'dev')): write_edf(root, split, f'subj{i:04d}', seed=i)
    write_edf(root, 'train', 'badbadba', seed=9, annotation=False)  # a failure is part of a complete cache
    corpus = dict(data_dir=str(root), cache_dir=str(cache))
    preflight(tiny(corpus, tmp_path / 'out'))  # builds both caches and the training statistics
    _make_read_only(read_only)
    r = run_without_override('build-cache', '--data-dir', root, '--cache-dir', cache / 'train')
    assert r.returncode == 0 and re.search(r'failed +1\n', r.stdout), r.stderr
    script = ('import sys; sys.path.insert(0, "tests"); from conftest import tiny; from brain_go_brrr.train import '
              f'preflight; print(preflight(tiny({corpus!r}, {str(tmp_path / "out")!r})).audit.verdict)')
    r = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=600,
                       preexec_fn=without_root_override)
    assert r.returncode == 0 and r.stdout.split()[-1] == 'ok', r.stderr


def test_an_incomplete_cache_on_read_only_storage_is_refused_before_any_work(tmp_path, write_edf, read_only):
    root, cache = tmp_path / 'tusz', read_only / 'cache'
    write_edf(root, 'train', 'subj0000', seed=0)
    build_cache(root, cache, 'train', progress=False)
    write_edf(root, 'train', 'subj0001', seed=1)  # new since the build
    _make_read_only(read_only)
    r = run_without_override('build-cache', '--data-dir', root, '--cache-dir', cache)
    assert r.returncode == 1 and 'Traceback' not in r.stderr, r.stderr
    assert f'build-cache: {cache}: cannot write (Permission denied)' in r.stderr, r.stderr


# 4. corpus walks follow symlinked folders, each real folder once
def test_a_symlinked_subject_folder_is_discovered_and_cached(tmp_path, write_edf):
    from brain_go_brrr.tusz import discover
    root, elsewhere = tmp_path / 'tusz', tmp_path / 'shared'
    write_edf(root, 'train', 'here0000', seed=1)
    write_edf(elsewhere, 'train', 'there000', seed=2)
    (root / 'edf' / 'train' / 'there000').symlink_to(elsewhere / 'edf' / 'train' / 'there000')
    assert [f.subject for f in discover(root, 'train')] == ['here0000', 'there000']
    assert build_cache(root, tmp_path / 'cache', 'train', progress=False)['recordings'] == 2


def test_check_splits_follows_a_symlinked_split(tmp_path, write_edf):
    root, elsewhere = tmp_path / 'tusz', tmp_path / 'shared'
    write_edf(root, 'dev', 'leakleak', seed=1)
    write_edf(elsewhere, 'train', 'leakleak', token='t001', seed=2)
    (root / 'edf' / 'train').symlink_to(elsewhere / 'edf' / 'train', target_is_directory=True)
    r = subprocess.run(CLI + ['check-splits', '--data-dir', str(root)], capture_output=True, text=True)
    assert r.returncode == 1 and 'leakleak: found in dev, train' in r.stdout, (r.stdout, r.stderr)


def test_a_symlink_loop_is_walked_once(tmp_path, write_edf):
    from brain_go_brrr.tusz import discover
    root = tmp_path / 'tusz'
    edf = write_edf(root, 'train', 'looploop', seed=1)
    (edf.parent / 'again').symlink_to(root / 'edf', target_is_directory=True)  # a link to an ancestor
    assert [f.path for f in discover(root)] == [edf]


def test_a_full_disk_while_saving_a_non_finite_batch_names_the_file_and_leaves_nothing(tmp_path):
    import torch
    from brain_go_brrr.train import save_nonfinite_batch
    x, y = torch.zeros(2, 19, 1000), torch.zeros(2, 1000)
    with file_size_limit(10_000), pytest.raises(OSError, match=r'nonfinite_batch_step3\.pt: cannot write'):
        save_nonfinite_batch(tmp_path, 3, x, y, [('t0', 0), ('t1', 0)])
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_while_saving_a_checkpoint_names_the_file_and_leaves_nothing(tmp_path):
    "torch.save straight to the file said only 'unexpected pos' and left `.last.pt.tmp` behind."
    import torch
    from brain_go_brrr.checkpoints import save_checkpoint
    state = {'model': {'w': torch.zeros(100_000)}, 'state': {'epoch': 1}}
    with file_size_limit(10_000), pytest.raises(OSError, match=r'last\.pt: cannot write .*disk'):
        save_checkpoint(tmp_path / 'last.pt', state)
    assert list(tmp_path.iterdir()) == []


def test_an_empty_checksum_file_is_named_with_the_fix(tmp_path):
    import torch
    from brain_go_brrr.checkpoints import CheckpointError, checksum_path, load_checkpoint, save_checkpoint
    path = tmp_path / 'last.pt'
    save_checkpoint(path, {'state': {'epoch': 1}})
    assert load_checkpoint(path)['state'] == {'epoch': 1}
    checksum_path(path).write_text('')
    with pytest.raises(CheckpointError, match=r'last\.pt\.sha256: empty .*remove it to load'):
        load_checkpoint(path)
