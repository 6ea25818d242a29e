"""The ``natinv`` command: ``run``, ``check``, ``compare``, ``synthesize``, ``info``, ``demo``.

Input errors end with one line ``natinv: error: ...`` on rank 0 and exit code 2 on every rank
(no traceback, no rank left waiting).
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
from collections.abc import Sequence
from pathlib import Path

from mpi4py import MPI

from natinv import parallel

__all__ = ["info", "main"]

ABORT_GRACE = 1.0  # seconds a failing rank waits, its message written, before it ends the others
_PETSC_PACKAGES = (
    "mumps",
    "scalapack",
    "superlu_dist",
    "superlu",
    "hypre",
    "cholmod",
    "strumpack",
    "metis",
    "parmetis",
    "ptscotch",
    "hdf5",
)


def info(comm: MPI.Comm = MPI.COMM_WORLD) -> dict[str, str]:
    """Versions of natinv and its stack, and the number of ranks."""
    import mpi4py
    import petsc4py
    from petsc4py import PETSc

    import dolfinx
    import numpy
    import torch

    import natinv

    version = PETSc.Sys.getVersionInfo()
    packages = [p for p in _PETSC_PACKAGES if PETSc.Sys.hasExternalPackage(p)]
    try:
        from slepc4py import SLEPc

        slepc = ".".join(str(v) for v in SLEPc.Sys.getVersion())
    except ImportError:
        slepc = "not available"
    return {
        "natinv": natinv.__version__,
        "python": platform.python_version(),
        "dolfinx": dolfinx.__version__,
        "petsc": f"{version['major']}.{version['minor']}.{version['subminor']}",
        "petsc packages": ", ".join(packages) or "none",
        "petsc4py": petsc4py.__version__,
        "slepc": slepc,
        "torch": f"{torch.__version__} (CUDA {'on' if torch.cuda.is_available() else 'off'})",
        "numpy": numpy.__version__,
        "mpi": MPI.Get_library_version().splitlines()[0].strip(),
        "mpi4py": mpi4py.__version__,
        "ranks": str(comm.size),
    }


def _widths(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(w) for w in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def _count(minimum: int):  # type: ignore[no-untyped-def]
    """An argparse type: an integer >= ``minimum``, named in the error otherwise."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value

    return parse


def _alphas(text: str) -> list[float]:
    """An argparse type: comma-separated positive finite numbers."""
    try:
        values = [float(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 1,0.1, got {text!r}") from None
    if not values or not all(math.isfinite(v) and v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive finite numbers, got {text!r}")
    return values


class _Parser(argparse.ArgumentParser):
    """An argument parser that reports errors on rank 0 only and exits on every rank."""

    def error(self, message: str) -> None:  # type: ignore[override]
        if MPI.COMM_WORLD.rank == 0:
            self.print_usage(sys.stderr)
            print(f"{self.prog}: error: {message}", file=sys.stderr, flush=True)
        raise SystemExit(2)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="natinv", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    sub.add_parser("info", help="versions of natinv, DOLFINx, PETSc, torch, MPI; number of ranks")
    demo = sub.add_parser("demo", help="fit a neural field to a target field (NGD vs Adam)")
    demo.add_argument("--out", type=Path, default=Path("results/demo"), help="output folder")
    demo.add_argument(
        "--cells", type=_count(1), default=32, help="cells per side of the unit square"
    )
    demo.add_argument(
        "--degree", type=_count(1), default=1, help="Lagrange degree of the field space"
    )
    demo.add_argument("--metric", choices=["l2", "h1"], default="l2")
    demo.add_argument("--widths", type=_widths, default=(2, 20, 20, 1), help="e.g. 2,20,20,1")
    demo.add_argument("--iterations", type=_count(0), default=60, help="natural-gradient steps")
    demo.add_argument(
        "--method",
        choices=["cholesky", "cg", "cutoff", "lm"],
        default="cholesky",
        help="natural-direction solver (also -natinv_gram_method)",
    )
    demo.add_argument("--damping", type=float, default=1e-6, help="λ in (G + λI) d = g")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--quiet", action="store_true", help="no progress lines")
    run = sub.add_parser("run", help="run a case file (TOML): optimise, write results/<case>/")
    run.add_argument("case", type=Path, help="the case file, e.g. cases/diffusion_hole.toml")
    run.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a case value"
    )
    run.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    run.add_argument(
        "--force", action="store_true", help="replace the results of an earlier run in the folder"
    )
    run.add_argument("--iterations", type=_count(0), help="override optimizer.iterations")
    run.add_argument("--quiet", action="store_true", help="no progress lines")
    chk = sub.add_parser(
        "check", help="validate a case completely (files, tags, sensors, formulas), no run"
    )
    chk.add_argument("case", type=Path, help="the case file")
    chk.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a case value"
    )
    cmp = sub.add_parser("compare", help="run a case with several optimizers, side by side")
    cmp.add_argument("case", type=Path)
    cmp.add_argument(
        "--optimizers",
        default="ngd,nnesterov,adam,lbfgs",
        help="ngd, nhb, nesterov, nnesterov, ngd-gncg, adam, lbfgs, tao-nls, tao-lmvm "
        "(finite-element baselines, α by the discrepancy principle; the search is a row)",
    )
    cmp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    cmp.add_argument("--iterations", type=_count(0), help="override optimizer.iterations")
    cmp.add_argument(
        "--force", action="store_true", help="replace an earlier comparison in the folder"
    )
    cmp.add_argument(
        "--alphas",
        type=_alphas,
        help="the baselines' Tikhonov weights to search, e.g. 1,0.1,0.01 (default 100 … 1e-4)",
    )
    syn = sub.add_parser(
        "synthesize",
        help="sensor data (CSV) from a known field on a fine discretisation, with noise",
    )
    syn.add_argument(
        "case", type=Path, nargs="?", help="a case file: write its [data].sensors from its truth"
    )
    syn.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a case value"
    )
    syn.add_argument("--model", default="diffusion", help="diffusion, source, nonlinear-diffusion")
    syn.add_argument("--truth", help="the true parameter, a formula of x, y")
    syn.add_argument("--source", default="1", help="the source f (κ for --model source)")
    syn.add_argument("--sensors", default="grid:10x10", help="grid:NxM, random:N or a .csv")
    syn.add_argument("--jitter", type=float, default=0.0, help="grid displacement (max)")
    syn.add_argument("--cells", type=_count(1), default=64, help="cells per side (fine mesh)")
    syn.add_argument("--degree", type=_count(1), default=2, help="Lagrange degree (fine)")
    syn.add_argument("--noise", type=float, default=0.01, help="σ (relative to max|u|)")
    syn.add_argument("--absolute", action="store_true", help="--noise is σ itself")
    syn.add_argument("--seed", type=int, default=0)
    syn.add_argument("--out", type=Path, help="the CSV file to write")
    syn.add_argument("--force", action="store_true", help="overwrite existing measurement files")
    return parser


def _drain_then_abort(comm, code: int) -> None:
    """End every rank after this one's message has left: mpirun's forwarder drops what is still
    in a rank's pipe when an abort kills it (measured: 5 of 12 two-rank runs lost the whole
    traceback), so the streams are flushed and given a moment to be read first."""
    import time

    sys.stdout.flush()
    sys.stderr.flush()
    time.sleep(ABORT_GRACE)
    comm.Abort(code)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``natinv`` (and ``python -m natinv``). Arguments unknown to natinv after
    ``--`` are passed to PETSc (e.g. ``-- -natinv_gram_method cg``)."""
    args_in = list(sys.argv[1:] if argv is None else argv)
    petsc_args: list[str] = []
    if "--" in args_in:
        split = args_in.index("--")
        args_in, petsc_args = args_in[:split], args_in[split + 1 :]
    args = _parser().parse_args(args_in)
    comm = MPI.COMM_WORLD
    if petsc_args:
        from petsc4py import PETSc

        PETSc.Options().insertString(" ".join(petsc_args))

    try:
        if args.command == "info":
            report = info(comm)
            width = max(len(k) for k in report)
            for key_, value in report.items():
                parallel.rank0_print(comm, f"{key_:<{width}}  {value}")
        elif args.command == "demo":
            from natinv.demo import DemoConfig, run_demo

            run_demo(
                DemoConfig(
                    cells=args.cells,
                    degree=args.degree,
                    metric=args.metric,
                    widths=args.widths,
                    iterations=args.iterations,
                    method=args.method,
                    damping=args.damping,
                    seed=args.seed,
                    out=args.out,
                    quiet=args.quiet,
                ),
                comm,
            )
        elif args.command == "run":
            from natinv.cases import load_case_on

            case = load_case_on(comm, args.case, args.set)  # (before the compute modules load)
            from natinv.runner import run

            summary = run(
                case,
                comm,
                resume=args.resume,
                force=args.force,
                quiet=args.quiet,
                iterations=args.iterations,
            )
            error = summary["relative_l2_error"]
            level = summary.get("discrepancy_level")
            if case.forward:
                fit = f"loss {summary['loss']:.4g}" if summary["loss"] is not None else "no step"
            else:
                fit = f"misfit {summary['misfit']:.4g}" + (
                    f" (noise level {level:.4g})" if level is not None else ""
                )
            parallel.rank0_print(
                comm,
                f"{case.name}: {summary['iterations']} iterations ({summary['stopped']}), {fit}"
                + (f", relative L2 error {error:.3e}" if error is not None else "")
                + f"; results in {case.output}/",
            )
        elif args.command == "check":
            from natinv.cases import load_case_on

            case = load_case_on(comm, args.case, args.set)
            from natinv.check import check_case

            for line in check_case(case, comm):
                parallel.rank0_print(comm, line)
        elif args.command == "compare":
            from natinv.cases import load_case_on

            load_case_on(comm, args.case, args.set)  # a case error before the compute modules load
            from natinv.compare import compare

            summaries = compare(
                args.case,
                [o.strip() for o in args.optimizers.split(",") if o.strip()],
                args.set,
                comm,
                iterations=args.iterations,
                force=args.force,
                **({"alphas": args.alphas} if args.alphas else {}),
            )
            fit = "misfit" if "misfit" in summaries[0] else "loss"  # inverse, forward
            parallel.rank0_print(
                comm,
                f"{'optimizer':<16} {'its':>5} {'stopped':>18} {fit:>10} {'error':>10} "
                f"{'time':>7} {'solves':>7}",
            )
            for s in summaries:
                error = s["relative_l2_error"]
                parallel.rank0_print(
                    comm,
                    f"{s['optimizer']:<16} {s['iterations']:5d} {s['stopped']:>18} "
                    f"{s[fit]:10.4g} {error if error is not None else float('nan'):10.3e} "
                    f"{s['time'] or 0.0:7.2f} {s.get('pde_solves', {}).get('operator', ''):>7}",
                )
        elif args.command == "synthesize" and args.case is not None:
            from natinv.cases import load_case_on

            case = load_case_on(comm, args.case, args.set)
            from natinv.synthesis import synthesize_case

            for data in synthesize_case(case, comm, force=args.force):
                sigma = data.sigma[0] if data.sigma is not None else 0.0
                what = "full field"
                if data.values.size:
                    what = (
                        f"{data.values.size} {'averages' if data.region is not None else 'sensors'}"
                    )
                parallel.rank0_print(comm, f"{data.source}: {what}, σ = {sigma:.3g}")
        elif args.command == "synthesize":
            from natinv.data import write_sensors

            if args.truth is None or args.out is None:
                raise ValueError("synthesize: give a case file, or --truth and --out")
            from natinv.synthesis import sensor_layout, synthesize

            points = sensor_layout(comm, args.sensors, args.seed, args.jitter)
            data = synthesize(
                comm,
                args.model,
                args.truth,
                points,
                source=args.source,
                cells=args.cells,
                degree=args.degree,
                noise=args.noise,
                relative=not args.absolute,
                seed=args.seed,
            )
            write_sensors(comm, args.out, data)
            sigma = 0.0 if data.sigma is None else float(data.sigma[0])
            parallel.rank0_print(
                comm,
                f"{args.out}: {data.values.size} sensors, values in "
                f"[{data.values.min():.4g}, {data.values.max():.4g}], σ = {sigma:.3g}",
            )
    except (parallel.CollectiveError, ValueError) as exc:
        parallel.rank0_print(comm, f"natinv: error: {exc}", file=sys.stderr)
        return 2
    except MemoryError:
        # one rank may be out of memory while the others wait for it in a collective: it
        # says so and ends them all (a collective error cannot be agreed on without memory)
        where = f" on rank {comm.rank} of {comm.size}" if comm.size > 1 else ""
        print(
            f"natinv: error: out of memory{where} (`natinv check` estimates what a run needs; "
            "use more ranks, a smaller network or a coarser model)",
            file=sys.stderr,
            flush=True,
        )
        if comm.size > 1:
            _drain_then_abort(comm, 3)
        return 3
    except Exception:
        # a defect on some ranks: the traceback, then no rank left waiting in a collective
        if comm.size > 1:
            import traceback

            traceback.print_exc()
            _drain_then_abort(comm, 1)
        raise
    return 0
