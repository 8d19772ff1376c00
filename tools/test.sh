#!/usr/bin/env bash
# Every test: the notebooks (nbdev_test executes each, run notebooks at their small CPU defaults) and pytest.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
nbdev_export
git diff --quiet --exit-code brain_go_brrr 2>/dev/null || { echo "brain_go_brrr/ differs from what nbs/ exports: run nbdev_export and commit" >&2; exit 1; }
nbdev_test --n_workers "${NBDEV_WORKERS:-2}" --timing
python -m pytest -q tests
