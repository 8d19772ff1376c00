"""SzCORE's contract: `szcore` turns one EDF into the `.tsv` `detect` writes, which `epilepsy2bids` reads back;
`szcore-package` writes a YAML that SzCORE's own schema accepts and a Dockerfile after SzCORE's template whose `CMD`
runs in the package's layout (everything up to `docker build`: there is no Docker here)."""
import os, platform, re, subprocess, sys
from pathlib import Path
import numpy as np
import pytest
import yaml
from epilepsy2bids.annotations import Annotations
from jsonschema import Draft7Validator, ValidationError
from torch.utils.cpp_extension import get_default_build_root

from brain_go_brrr.synth import SZCORE_SFREQ, write_szcore_edf
from brain_go_brrr.cli import main
from test_detect import detect

SZCORE = Path(__file__).parent / 'data' / 'szcore'  # schema.json, from esl-epfl/szcore
# The lines of SzCORE's config/template.Dockerfile (esl-epfl/szcore at 51d1ded) that make its container contract
TEMPLATE = ('WORKDIR /app', 'USER appuser', 'VOLUME ["/data"]', 'VOLUME ["/output"]', 'ENV INPUT=""', 'ENV OUTPUT=""')
IMAGE = 'ghcr.io/someone/brain-go-brrr:0.1.0'
HEADER = 'onset\tduration\teventType\tconfidence\tchannels\tdateTime\trecordingDuration'  # SzCORE's CI checks it


def run(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-m', 'brain_go_brrr', *map(str, args)], capture_output=True, text=True,
                          timeout=900, **kw)


@pytest.fixture(scope='module')
def recording(tmp_path_factory):
    "A 10-min SzCORE-format recording (19 `-Avg` channels at 256 Hz): noise, a 3-Hz rhythm in its middle third."
    n = SZCORE_SFREQ * 600
    x = np.random.default_rng(3).normal(0, 20, (19, n))
    x[::2, n // 3:2 * n // 3] += 120 * np.sin(2 * np.pi * 3 * np.arange(n // 3) / SZCORE_SFREQ)
    return write_szcore_edf(tmp_path_factory.mktemp('data') / 'sub-01_ses-01_task-szMonitoring_run-00_eeg.edf', x)


@pytest.fixture(scope='module')
def detected(averaged, recording, tmp_path_factory):
    "`detect`'s .tsv of the recording, at the dev operating point (10 FA/24h) and at a threshold of 0.3."
    out = {}
    for name, point in (('dev', ()), ('0.3', ('--threshold', 0.3))):
        folder = tmp_path_factory.mktemp(f'detect{name}')
        r = detect('--checkpoint', averaged, recording, '--out', folder, '--no-figures', *point)
        assert r.returncode == 0, r.stderr
        out[name] = folder / (recording.stem + '.tsv')
    return out


@pytest.fixture(scope='module')
def package(averaged, tmp_path_factory):
    "What `szcore-package` writes for the trained detector at its dev operating point."
    out = tmp_path_factory.mktemp('package') / 'szcore'
    r = run('szcore-package', '--checkpoint', averaged, '--out', out, '--image', IMAGE, '--author', 'Doe, Jane, EPFL',
            '--author', 'Roe, Richard', '--dataset', 'TUH EEG Seizure Corpus v2.0.3',
            '--repository', 'https://example.org/brain-go-brrr')
    assert r.returncode == 0, r.stderr
    assert f'docker build -t {IMAGE} {out}' in r.stdout
    return out


def test_szcore_writes_what_detect_writes_and_epilepsy2bids_reads_it(averaged, recording, detected,
                                                                     tmp_path):
    for name, point in (('dev', ()), ('0.3', ('--threshold', 0.3))):
        tsv = tmp_path / name / 'out.tsv'  # its folder is created
        r = run('szcore', recording, tsv, '--checkpoint', averaged, *point)
        assert r.returncode == 0, r.stderr
        assert f'wrote {tsv}' in r.stdout and r.stdout.count('\n') == 1
        assert tsv.read_bytes() == detected[name].read_bytes()
        assert tsv.read_text().splitlines()[0] == HEADER
        assert sorted(p.name for p in tsv.parent.iterdir()) == ['out.tsv']  # nothing else
        ours, theirs = Annotations.loadTsv(str(tsv)), Annotations.loadTsv(str(detected[name]))
        assert ours.getEvents() == theirs.getEvents()
        assert all(e['recordingDuration'] == 600 for e in ours.events)
    assert Annotations.loadTsv(str(tmp_path / '0.3' / 'out.tsv')).getEvents(), 'a 3-Hz rhythm of 200 s at 0.3'


def test_bad_input_and_unwritable_output_are_one_line_and_leave_no_tsv(averaged, recording, tmp_path,
                                                                       capsys):
    (tmp_path / 'notes.edf').write_text('not an EDF\n')
    (tmp_path / 'afile').write_text('')
    cases = [(tmp_path / 'missing.edf', tmp_path / 'a.tsv', 'missing.edf: no such file'),
             (tmp_path, tmp_path / 'b.tsv', 'a folder; give the EDF'),
             (tmp_path / 'notes.edf', tmp_path / 'c.tsv', 'notes.edf'),
             (recording, tmp_path / 'afile' / 'd.tsv', 'afile: cannot write'),
             (recording, tmp_path, 'a folder; give the path of the .tsv')]
    for edf, tsv, says in cases:  # in this process: cli.main prints what `python -m brain_go_brrr` prints
        assert main(['szcore', str(edf), str(tsv), '--checkpoint', str(averaged)]) == 1
        out, err = capsys.readouterr()
        assert out == '' and len(err.strip().splitlines()) == 1 and says in err and err.startswith('szcore: '), err
    assert not list(tmp_path.glob('*.tsv'))
    assert main(['szcore', str(recording), str(tmp_path / 'e.tsv')]) == 1
    assert 'the following arguments are required: --checkpoint' in capsys.readouterr().err


def test_the_yaml_validates_against_szcore_schema(package):
    schema = yaml.safe_load((SZCORE / 'schema.json').read_text())
    text = (package / 'brain-go-brrr.yaml').read_text()
    doc = yaml.safe_load(text)
    validator = Draft7Validator(schema, format_checker=Draft7Validator.FORMAT_CHECKER)
    validator.validate(doc)
    assert doc['image'] == IMAGE and doc['datasets'] == ['TUH EEG Seizure Corpus v2.0.3']
    assert doc['authors'][0] == dict(given_names='Jane', family_names='Doe', affiliation='EPFL')
    assert 'chosen on dev for 10 FA/24h' in doc['abstract']
    # SzCORE's CI and website take the image with `grep '^image: ' | sed 's/^image: \+//' | tr -d \'\"`
    line = next(l for l in text.splitlines() if l.startswith('image: '))
    assert re.sub(r'^image: +', '', line).replace('"', '').replace("'", '') == IMAGE
    with pytest.raises(ValidationError, match='too long'):  # the schema bites: short_title is at most 20 characters
        validator.validate({**doc, 'short_title': 'x' * 21})


def test_the_dockerfile_follows_szcore_template_and_copies_what_is_there(package):
    "The template's contract lines, the CMD (the template's `python3 -m algo` replaced by the entry point), the copies."
    ours = (package / 'Dockerfile').read_text().splitlines()
    assert all(line in ours for line in TEMPLATE)
    cmd = [l for l in ours if l.startswith('CMD')]
    assert cmd == ['CMD python3 -m brain_go_brrr szcore "/data/${INPUT}" "/output/${OUTPUT}" '
                   '--checkpoint /app/detector.pt --operating-point 10'] and ours[-1] == cmd[0]
    assert f'ARG PYTHON_VERSION={platform.python_version()}' in ours
    copies = [l.split()[1:-1] for l in ours if l.startswith('COPY')]
    assert copies and all((package / src).exists() for srcs in copies for src in srcs), copies
    lock = (package / 'requirements.lock').read_text().split()
    assert 'torch==2.13.0+cpu' in lock and lock == (Path(__file__).parents[1] / 'requirements.lock').read_text().split()
    assert 'ninja' in (package / 'requirements.txt').read_text().split()
    assert (package / 'brain_go_brrr' / 'benchmark.py').read_text() == \
        (Path(__file__).parents[1] / 'brain_go_brrr' / 'benchmark.py').read_text()


def test_the_cmd_runs_in_the_package_layout_and_writes_what_detect_writes(package, recording, detected, tmp_path):
    """The CMD as the container runs it: /app the package, /data and /output volumes, the package's own brain_go_brrr,
    and no network: a `sitecustomize` makes every socket connection fail, as on SzCORE's machine."""
    cmd = (package / 'Dockerfile').read_text().strip().splitlines()[-1].removeprefix('CMD ')
    cmd = (cmd.replace('/data/', f'{recording.parent}/').replace('/output/', f'{tmp_path}/output/')
           .replace('/app/', f'{package}/'))
    offline = tmp_path / 'offline'
    offline.mkdir()
    (offline / 'sitecustomize.py').write_text(
        'import socket\n'
        'def refuse(*args, **kw): raise OSError("the network was used at run time")\n'
        'socket.socket.connect = socket.socket.connect_ex = socket.create_connection = refuse\n')
    env = dict(os.environ, INPUT=recording.name, OUTPUT='run-00.tsv', PYTHONPATH=f'{package}:{offline}',
               HOME=str(tmp_path), PATH=f'{Path(sys.executable).parent}:{os.environ["PATH"]}',  # `python3`: ours
               # the kernels as compiled on this machine (a container compiles its own: bench_detect --entry szcore)
               TORCH_EXTENSIONS_DIR=get_default_build_root())
    (tmp_path / 'output').mkdir()
    r = subprocess.run(['sh', '-c', cmd], cwd=package, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / 'output' / 'run-00.tsv').read_bytes() == detected['dev'].read_bytes()
    where = subprocess.run(['python3', '-c', 'import brain_go_brrr, urllib.request\n'
                            'print(brain_go_brrr.__file__)\nurllib.request.urlopen("http://example.org", timeout=5)'],
                           cwd=package, env=env, capture_output=True, text=True)
    assert Path(where.stdout.strip()) == package / 'brain_go_brrr' / '__init__.py'
    assert 'the network was used at run time' in where.stderr  # the guard holds


def test_package_refusals_are_one_line_and_write_nothing(averaged, as_recorded, tmp_path, capsys):
    (tmp_path / 'busy').mkdir()
    (tmp_path / 'busy' / 'notes.txt').write_text('mine')
    base = ['szcore-package', '--checkpoint', str(averaged), '--author', 'Doe, Jane', '--dataset', 'TUSZ']
    cases = [(['--out', tmp_path / 'a', '--image', 'brain-go-brrr'], 'REGISTRY/NAME:TAG'),
             (['--out', tmp_path / 'b', '--image', IMAGE, '--short-title', 'x' * 21], '1 to 20 characters'),
             (['--out', tmp_path / 'busy', '--image', IMAGE], 'not empty and not a package'),
             (['--out', tmp_path / 'c', '--image', IMAGE, '--operating-point', 7], 'not 7'),
             (['--out', tmp_path / 'd', '--image', IMAGE, '--author', 'Jane Doe'], 'Family names, Given names')]
    # a model trained on TUSZ as recorded (-REF, -LE) would be refused on every one of SzCORE's -Avg recordings
    cases.append((['--out', tmp_path / 'e', '--image', IMAGE, '--checkpoint', as_recorded], 'AVG-referenced'))
    for args, says in cases:
        assert main([*base, *map(str, args)]) == 1
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and says in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ['busy']
    assert [p.name for p in (tmp_path / 'busy').iterdir()] == ['notes.txt']
