"Parameter files: valid, and complete enough that papermill's -f replaces every key of the default."
from pathlib import Path
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
