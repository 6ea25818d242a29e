#!/usr/bin/env bash
# The test command: set up .venv if needed, check style, run the suite serially and on 2 ranks.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
scripts/bootstrap.sh
py=.venv/bin/python
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"  # two ranks on two cores: no oversubscription

echo "== ruff"
.venv/bin/ruff check natinv tests bench meshes
.venv/bin/ruff format --check natinv tests bench meshes

# pytest's exit code 5 ("no tests collected") is a failure here, like any other non-zero code.
echo "== pytest, 1 rank"
"$py" -m pytest -q "$@"
echo "== pytest, 2 ranks"
.venv/bin/mpirun -n 2 "$py" -m mpi4py -m pytest -q -p no:cacheprovider "$@"
echo "== all tests passed serially and on 2 ranks"
