#!/usr/bin/env bash
# Every test: the notebooks (nbdev_test executes each, run notebooks at their small CPU defaults) and pytest.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
# The test command's own packages (requirements-test.lock), stamped apart from env.sh's pinned set
test_stamp=".venv/.requirements-test.sha"
test_want="$(sha256sum requirements-test.lock | cut -d' ' -f1)"
if [ "$(cat "$test_stamp" 2>/dev/null)" != "$test_want" ]; then
  echo "Installing the test command's packages (requirements-test.lock) into .venv (first run only)..."
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --ignore-requires-python -r requirements-test.lock
  echo "$test_want" > "$test_stamp"
fi
nbdev_export
bash tools/readme.sh
if [ "${CI:-}" = true ]; then  # on a clean checkout, the package and README must be what the notebooks generate
  git diff --quiet --exit-code brain_go_brrr README.md || { git diff --stat; echo "brain_go_brrr/ or README.md differ from what nbs/ generates: run nbdev_export and tools/readme.sh, then commit" >&2; exit 1; }
fi
nbdev_test --n_workers "${NBDEV_WORKERS:-2}" --timing
# the pytest files in parallel, one worker per core; each file's tests stay in one worker (--dist loadfile), so a
# module's trained fixtures are built once, and no test depends on another file's
python -m pytest -q -n "${PYTEST_WORKERS:-2}" --dist loadfile tests
