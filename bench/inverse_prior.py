"""The neural field's prior, measured: input encodings and widths on the inverse suite's problems.

Runs plain natural Gauss–Newton (the defaults: Levenberg–Marquardt damping, Armijo steps, no
momentum) to the noise level on each problem of ``bench/inverse_suite.py`` with the case's
network and with variants — random Fourier features of the coordinates at several scales, a
wider network — and prints iterations, time and the final error of κ side by side.

    OMP_NUM_THREADS=1 .venv/bin/python bench/inverse_prior.py [--problems a,b] [--ranks 2]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from inverse_suite import NEURAL, natinv, prepare

VARIANTS: dict[str, list[str]] = {
    "case network": ["parameter.features='none'"],
    "fourier 16, scale 0.5": ["parameter.features={count=16, scale=0.5}"],
    "fourier 16, scale 1": ["parameter.features={count=16, scale=1.0}"],
    "fourier 16, scale 2": ["parameter.features={count=16, scale=2.0}"],
    "fourier 32, scale 1": ["parameter.features={count=32, scale=1.0}"],
    "width 40": ["parameter.network=[2, 40, 40, 1]", "parameter.features='none'"],
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=1)
    parser.add_argument(
        "--problems", default="diffusion_hole,lshape_probes,elasticity_beam,hole_sharp,lshape_sharp"
    )
    args = parser.parse_args()
    print(f"{args.ranks} rank(s); natural Gauss–Newton to the noise level (or 150 iterations)")
    for name in args.problems.split(","):
        settings = [*NEURAL, "optimizer.kind='ngd'", "optimizer.momentum='none'"]
        case, overrides, work = prepare(name, settings)
        print(f"\n{name}\n  {'variant':<24} {'P':>6} {'its':>4} {'time':>7} {'error':>8}")
        for label, variant in VARIANTS.items():
            out = work / label.replace(" ", "_").replace(",", "")
            settings = [*overrides, *variant, f"output.folder='{out}'"]
            natinv(
                ["run", str(case), "--quiet", *[a for o in settings for a in ("--set", o)]],
                args.ranks,
            )
            s = json.loads((out / "summary.json").read_text())
            print(
                f"  {label:<24} {s['parameters']:>6} {s['iterations']:>4} {s['time']:>7.2f} "
                f"{s['relative_l2_error']:>8.4f}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
