#!/usr/bin/env bash
# The main job: set up .venv if needed and run the fitting demo on 2 ranks (results/demo/).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
scripts/bootstrap.sh
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec .venv/bin/mpirun -n "${NATINV_RANKS:-2}" .venv/bin/natinv demo "$@"
