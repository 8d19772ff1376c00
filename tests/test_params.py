"Parameter files: valid, and complete enough that papermill's -f replaces every key of the default."
from pathlib import Path
import pytest
import yaml
from brain_go_brrr.params import load_params

PARAMS = Path(__file__).parent.parent / 'params'


def test_every_parameter_file_is_valid():
    for f in PARAMS.glob('*.yaml'):
        load_params(f)


def test_gpu_full_sets_every_key_the_default_sets():
    "`papermill nbs/train.ipynb ... -f params/gpu_full.yaml` injects its keys over cpu_smoke.yaml's: none may be left over."
    smoke, gpu = (yaml.safe_load((PARAMS / f).read_text()) for f in ('cpu_smoke.yaml', 'gpu_full.yaml'))
    assert set(smoke) == set(gpu) and set(smoke['model']) == set(gpu['model'])


# issue #26: parameter files and -p values parsed with limits
import resource, subprocess, sys

CLI = [sys.executable, '-m', 'brain_go_brrr']
ALIAS_BOMB = '\n'.join(['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]'] +
                       [f'{b}: &{b} [{",".join([f"*{a}"] * 9)}]' for a, b in zip('abcdefgh', 'bcdefghi')] +
                       ['run_name: *i', ''])


def _limited_memory():
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, resource.getrlimit(resource.RLIMIT_AS)[1]))


def test_an_alias_bomb_is_refused_in_one_line_without_expanding_it(tmp_path):
    bomb = tmp_path / 'bomb.yaml'
    bomb.write_text(ALIAS_BOMB)
    assert len(ALIAS_BOMB) < 600  # the 490 bytes expanded to 1.9 GB
    r = subprocess.run(CLI + ['validate', str(bomb)], capture_output=True, text=True, timeout=300,
                       preexec_fn=_limited_memory)
    assert r.returncode == 1 and 'Traceback' not in r.stderr, r.stderr[-2000:]
    assert r.stderr.count('\n') == 1 and 'aliases' in r.stderr and str(bomb) in r.stderr, r.stderr[-2000:]


def test_a_long_bad_value_is_quoted_by_a_short_prefix(tmp_path):
    f = tmp_path / 'long.yaml'
    f.write_text(f'run_name: [{", ".join(["x" * 50] * 200)}]\n')
    r = subprocess.run(CLI + ['validate', str(f)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and 'run_name' in r.stderr and len(r.stderr) < 400, r.stderr


@pytest.mark.parametrize('value', ['lr=[1, 2', 'lr={a: 1', 'lr=*nowhere', 'lr=!!python/object/apply:os.system ["true"]',
                                   "lr='open", 'lr=a: b: c', '=1', 'lr', 'lr=' + 'x' * 5000])
def test_every_malformed_p_value_is_one_line_and_exit_1(tmp_path, capsys, value):
    from brain_go_brrr.cli import main
    assert main(['train', '-p', f'output_dir={tmp_path}', '-p', value]) == 1
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and err.startswith('train: ') and len(err) < 400, err
