#!/usr/bin/env bash
# The main job: set up .venv if needed and run the headline case on 2 ranks: a diffusion
# coefficient on a plate with a hole, from 80 noisy point sensors (results/diffusion-hole/).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
scripts/bootstrap.sh
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec .venv/bin/mpirun -n "${NATINV_RANKS:-2}" .venv/bin/natinv run cases/diffusion_hole.toml "$@"
