"""Robustness of the talk1d result over seeds, momentum factors and damping.

For each damping λ and each network seed, plain natural gradient and each momentum variant with
each β run the talk's 1D problem (see ``bench/talk1d.py``) to ‖u − u*‖²_L2 ≤ 1e-11. Prints per
(λ, variant, β): how many seeds reached the target, the median iterations and the median ratio of
iterations and of wall time to plain natural gradient on the same seed (a run that missed the
target counts as the iteration limit, as does one stopped by a failed factorisation of the
damped Gram).

Usage: ``python bench/sweep1d.py [--problem reaction-diffusion] [--seeds 0,1,2,3,4]
[--betas 0.3,0.5,0.7] [--dampings 1e-10,1e-8,1e-6] [--variants natural-nesterov,spring]``
(serial; one BLAS thread; about 5 s per run).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import numpy as np
import talk1d

TARGET = talk1d.TARGET


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problem", choices=sorted(talk1d.PROBLEMS), default="reaction-diffusion")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--betas", default="0.3,0.5,0.7")
    parser.add_argument("--dampings", default="1e-10,1e-8,1e-6")
    parser.add_argument("--variants", default="natural-nesterov,spring")
    parser.add_argument("--max-iterations", type=int, default=200)
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    betas = [float(b) for b in args.betas.split(",")]
    print(
        f"{'damping':>8} {'variant':<20} {'beta':>5} {'reached':>8} {'median its':>10} "
        f"{'its/plain':>9} {'time/plain':>10}"
    )
    for damping in (float(d) for d in args.dampings.split(",")):
        plain = {}
        for seed in seeds:
            options = argparse.Namespace(
                problem=args.problem,
                max_iterations=args.max_iterations,
                damping=damping,
                seed=seed,
            )
            plain[seed] = talk1d.run("none", 0.0, options)
        rows = [("none", 0.0)] + [(v, b) for v in args.variants.split(",") for b in betas]
        for variant, beta in rows:
            results = {}
            for seed in seeds:
                if variant == "none":
                    results[seed] = plain[seed]
                    continue
                options = argparse.Namespace(
                    problem=args.problem,
                    max_iterations=args.max_iterations,
                    damping=damping,
                    seed=seed,
                )
                results[seed] = talk1d.run(variant, beta, options)

            def its(r: dict) -> float:
                return r["iterations"] if r["error"] <= TARGET else args.max_iterations

            reached = sum(r["error"] <= TARGET for r in results.values())
            median = np.median([its(r) for r in results.values()])
            ratio = np.median([its(results[s]) / its(plain[s]) for s in seeds])
            time_ratio = np.median([results[s]["time"] / plain[s]["time"] for s in seeds])
            print(
                f"{damping:8.0e} {variant:<20} {beta:5.2f} {reached:>4}/{len(seeds):<3} "
                f"{median:10.0f} {ratio:9.2f} {time_ratio:10.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
