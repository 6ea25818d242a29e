#!/usr/bin/env bash
# The test command: set up .venv if needed, check style, run the suite serially and on 2 ranks,
# and the tests that compare N ranks with one on 3 and 4 ranks too.
#
# Usage: scripts/test.sh [pytest arguments]
#   By default the claims marked `slow` are left out (the whole suite waits longer than a
#   newcomer should); NATINV_TESTS=slow runs only them, NATINV_TESTS=all runs everything.
#   .ci/run runs both tiers.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
scripts/bootstrap.sh
py=.venv/bin/python
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"  # two ranks on two cores: no oversubscription

case "${NATINV_TESTS:-fast}" in
    fast) tier=(-m "not slow"); ranks=(-m "ranks and not slow") ;;
    slow) tier=(-m slow); ranks=(-m "ranks and slow") ;;
    all) tier=(); ranks=(-m ranks) ;;
    *) echo "natinv: NATINV_TESTS=${NATINV_TESTS}: expected fast, slow or all" >&2; exit 2 ;;
esac

echo "== ruff"
.venv/bin/ruff check natinv tests bench meshes
.venv/bin/ruff format --check natinv tests bench meshes

# pytest's exit code 5 ("no tests collected") is a failure here, like any other non-zero code.
echo "== pytest, 1 rank (${NATINV_TESTS:-fast} tier)"
"$py" -m pytest -q --durations=15 "${tier[@]}" "$@"
echo "== pytest, 2 ranks (${NATINV_TESTS:-fast} tier)"
.venv/bin/mpirun -n 2 "$py" -m mpi4py -m pytest -q -p no:cacheprovider --durations=15 \
    "${tier[@]}" "$@"
# the tests that compare N ranks with one, on 3 and 4 ranks too (oversubscribed: correctness);
# none collected is a failure only for the whole fast tier (the slow tier has none today, and a
# selection of files may have none)
for n in 3 4; do
    echo "== pytest, $n ranks (${NATINV_TESTS:-fast} tier, the N-ranks-against-one tests)"
    status=0
    .venv/bin/mpirun -n "$n" "$py" -m mpi4py -m pytest -q -p no:cacheprovider "${ranks[@]}" \
        "$@" || status=$?
    if [ "$status" -ne 0 ] && ! { [ "$status" -eq 5 ] &&
        { [ "${NATINV_TESTS:-fast}" = slow ] || [ $# -gt 0 ]; }; }; then
        exit "$status"
    fi
done
echo "== all tests of the ${NATINV_TESTS:-fast} tier passed serially and on 2 ranks (and 3, 4)"
