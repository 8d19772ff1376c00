"Incident replays as a user runs them: papermill with `-p guard false`, the OOM parameter file, the memory probe's errors."
import json, os, subprocess, sys
from pathlib import Path
import pytest
from brain_go_brrr.incidents import peak_memory

ROOT = Path(__file__).resolve().parents[1]
ENV = os.environ | {'OMP_NUM_THREADS': '1'}


def test_replay_with_guard_false_runs_only_the_failure(tmp_path):
    "The replay command of the index, on the quickest incident: `reproduced` true, the guard side not run (null)."
    run_dir = tmp_path / 'replay'
    out = subprocess.run([sys.executable, '-m', 'papermill', 'nbs/incidents/incident_nan_dynamic_pe.ipynb', str(tmp_path / 'out.ipynb'),
                          '-p', 'guard', 'false', '-p', 'run_name', str(run_dir)],
                         capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    record = json.loads((run_dir / 'incident.json').read_text())
    assert record['reproduced'] is True and record['prevented'] is None and record['guard'] == 'false'
    assert record['grad_norm_reference'] == {'all zeros': 'nan', 'complete graph': 'nan'} and record['grad_norm_project'] == {}


def test_oom_parameter_file_is_valid_and_is_the_reference_configuration():
    out = subprocess.run([sys.executable, '-m', 'brain_go_brrr', 'validate', 'params/incident_oom_24gb.yaml'],
                         capture_output=True, text=True, cwd=ROOT, env=ENV)
    assert out.returncode == 0, out.stderr
    from brain_go_brrr.params import load_params
    p = load_params(ROOT / 'params/incident_oom_24gb.yaml')
    assert (p.batch_size, p.window_s, p.model.semi_dynamic_interval) == (8, 60, 1) and p.model.pe_chunk_size >= 8 * 960


def test_peak_memory_names_the_target_that_failed():
    with pytest.raises(RuntimeError, match=r'(?s)brain_go_brrr.incidents:no_such_workload.*AttributeError'):
        peak_memory('brain_go_brrr.incidents:no_such_workload')
