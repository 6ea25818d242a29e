"""How well the Laplace σ of the neural field covers the truth, per prior precision.

Each shipped synthetic inverse case with a neural field (``diffusion_hole``,
``diffusion_lshape_probes``, ``elasticity_beam``, ``heat_bracket_3d``) is run to the noise level
with the default optimizer and an ``[uncertainty]`` table, once per prior precision δ: the
default ``1e-3 · max diag G`` (the last natural step's damping), MacKay's evidence maximiser
(``"evidence"``) and fixed values. Printed per case and δ: δ, the 2σ coverage of the truth (the
fraction of dofs with |m − m_true| ≤ 2σ; 0.95 for a calibrated Gaussian), the mean σ over the
dofs, and the relative L2 error of the field. ``--priors tao`` runs the finite-element baseline
instead (TAO Gauss–Newton at the α the discrepancy principle chose, low-rank approximation
with 50 eigenpairs and the prior precision α(K + M)).

    OMP_NUM_THREADS=1 .venv/bin/python bench/uncertainty.py [--cases a,b] [--priors damping,10]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from inverse_suite import natinv

ROOT = Path(__file__).resolve().parents[1]
CASES = ("diffusion_hole", "diffusion_lshape_probes", "elasticity_beam", "heat_bracket_3d")
#: the baseline's α by the discrepancy principle (bench/inverse_suite.py, bench/RESULTS.md)
TAO_ALPHAS = {
    "diffusion_hole": 30.0,
    "diffusion_lshape_probes": 100.0,
    "elasticity_beam": 1000.0,
    "heat_bracket_3d": 100.0,
}


def run(case: str, prior: str) -> dict:
    folder = Path(tempfile.mkdtemp(prefix=f"uq-{case}-"))
    args = ["run", str(ROOT / "cases" / f"{case}.toml"), "--quiet"]
    args += ["--set", f"output.folder='{folder}'", "--set", "uncertainty.samples=0"]
    if prior == "tao":  # the finite-element baseline, low rank, prior α(K + M)
        args += ["--set", "optimizer.kind='tao-nls'", "--set", "optimizer.iterations=200"]
        args += ["--set", f"regularization.alpha={TAO_ALPHAS[case]}"]
    elif prior in ("evidence", "damping"):
        args += ["--set", f"uncertainty.prior_precision='{prior}'"]
    else:
        args += ["--set", f"uncertainty.prior_precision={prior}"]
    natinv(args, 1)
    return json.loads((folder / "summary.json").read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--priors", default="damping,evidence")
    args = parser.parse_args()
    print(f"  {'case':<24} {'prior':<9} {'δ':>10} {'coverage':>9} {'mean σ':>9} {'error':>8}")
    print("  (tao: the finite-element baseline at its discrepancy α, low rank 50, δ = mass = α)")
    for case in args.cases.split(","):
        for prior in args.priors.split(","):
            summary = run(case, prior)
            u = summary["uncertainty"]
            delta = u.get("prior_precision", u.get("mass"))
            print(
                f"  {case:<24} {prior:<9} {delta:>10.4g} "
                f"{u['coverage_2sigma']:>9.3f} {u['mean_std']:>9.4f} "
                f"{summary['relative_l2_error']:>8.4f}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
