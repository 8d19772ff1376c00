# Sourced by main.sh and test.sh: create (or reuse) .venv at the repository root with the pinned set.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
py="${PYTHON:-python3.11}"; command -v "$py" >/dev/null || py=python3
[ -x .venv/bin/python ] || "$py" -m venv .venv
stamp=".venv/.requirements.sha"
want="$(cat requirements.lock requirements-nodeps.lock setup.py settings.ini | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "Installing the pinned environment into .venv (first run only)..."
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade "pip<27"
  # torch is pinned to the CPU build; the lock pins every other package so pip resolves nothing new.
  .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.lock
  # epilepsy2bids only for its SzCORE .tsv reader in the tests; its EDF converter's dependencies are not needed
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -r requirements-nodeps.lock
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -e .
  echo "$want" > "$stamp"
fi
export PATH="$root/.venv/bin:$PATH"
export MPLBACKEND=Agg PYTHONHASHSEED=0
# The C++ Mamba kernels compile once per machine and source (about 40 s, then cached); a no-op when they are current.
python -c 'from brain_go_brrr.cpu_kernels import cpu_kernels; cpu_kernels()'
