"""Failure paths: one error line on every rank and no rank left waiting, checkpoints that are
data, repeatable parallel runs, and a command line that answers without loading the stack.

The hang tests launch ``mpirun -n 2`` and ``-n 3`` under a timeout when the suite runs serially
(a hang becomes a failure, not a stuck suite); under ``mpirun -n 2`` they run the same inputs in
this process, on the suite's own ranks."""

from __future__ import annotations

import csv
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import read_checkpoint

from natinv.cli import main

ROOT = Path(__file__).resolve().parents[1]
HOLE = ROOT / "cases" / "diffusion_hole.toml"
LSHAPE = ROOT / "cases" / "diffusion_lshape_probes.toml"
TALK = ROOT / "cases" / "talk_pinn_1d.toml"
MPIRUN = Path(sys.executable).with_name("mpirun")
HANG = 120  # seconds: a failing input ends in a few


def launch(ranks: int, args: list[str]) -> subprocess.CompletedProcess[str]:
    """``mpirun -n ranks python -m natinv ARGS`` killed after HANG seconds (rc 137 then)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PMI_", "PMIX_", "HYDRA_", "MPIR_", "MPI_LOCAL"))
    }
    env["OMP_NUM_THREADS"] = "1"
    command = ["timeout", "-s", "KILL", str(HANG), str(MPIRUN), "-n", str(ranks)]
    command += [sys.executable, "-m", "natinv", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)


def bad_inputs(folder: Path) -> dict[str, tuple[list[str], str]]:
    """Inputs that must end in one error line: (natinv arguments, a fragment of the message)."""
    truncated = folder / "truncated.msh"
    source = (ROOT / "meshes" / "plate_with_hole.msh").read_bytes()
    truncated.write_bytes(source[: len(source) // 3])
    text = folder / "text.msh"
    text.write_text("this is not a mesh\n")
    xdmf = folder / "lost.xdmf"
    xdmf.write_text(
        '<Xdmf Version="3.0"><Domain><Grid Name="mesh"><Topology TopologyType="Triangle" '
        'NumberOfElements="2"><DataItem Dimensions="2 3" Format="HDF">lost.h5:/Mesh/topology'
        '</DataItem></Topology><Geometry GeometryType="XY"><DataItem Dimensions="4 2" '
        'Format="HDF">lost.h5:/Mesh/x</DataItem></Geometry></Grid></Domain></Xdmf>\n'
    )
    binary = folder / "binary.csv"
    binary.write_bytes(bytes(range(256)) * 4)
    blocked = folder / "blocked"
    blocked.write_text("a file where the output folder should be\n")
    out = f"output.folder='{folder / 'out'}'"
    run = ["run", str(HOLE), "--iterations", "1", "--quiet", "--set", out, "--set"]
    return {
        "truncated mesh": ([*run, f"mesh.file='{truncated}'"], "not a readable gmsh mesh"),
        "text as mesh": ([*run, f"mesh.file='{text}'"], "not a readable gmsh mesh"),
        "xdmf without its arrays": ([*run, f"mesh.file='{xdmf}'"], "cannot be read"),
        "binary data file": ([*run, f"data.sensors='{binary}'"], "cannot be read"),
        "output folder is a file": (
            [*run, f"output.folder='{blocked}'"],
            "a file is in the place of the output folder",
        ),
    }


@pytest.mark.parametrize(
    "what",
    [
        pytest.param("truncated mesh", marks=pytest.mark.slow),
        pytest.param("text as mesh", marks=pytest.mark.slow),
        pytest.param("xdmf without its arrays", marks=pytest.mark.slow),
        "binary data file",
        pytest.param("output folder is a file", marks=pytest.mark.slow),
    ],
)
def test_bad_input_ends_with_one_error_line_on_every_rank_count(comm, shared_tmp, capsys, what):
    """On 2 and 3 ranks: exit code 2 within the timeout (no rank left waiting), one
    ``natinv: error:`` line naming what is wrong, and no result folder."""
    if comm.rank == 0:
        inputs = bad_inputs(shared_tmp)
    comm.Barrier()
    args, fragment = comm.bcast(inputs[what] if comm.rank == 0 else None, root=0)
    if comm.size == 1:
        for ranks in (2, 3):
            result = launch(ranks, args)
            assert result.returncode == 2, (ranks, result.returncode, result.stderr[-2000:])
            assert result.stderr.count("natinv: error:") == 1, result.stderr[-2000:]
            assert fragment in result.stderr and "Traceback" not in result.stderr
    else:
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.count("natinv: error:") == (1 if comm.rank == 0 else 0)
        assert (fragment in err) == (comm.rank == 0)
    assert not (shared_tmp / "out").exists()


@pytest.mark.slow
def test_a_rank_that_owns_no_cell_takes_part(comm, shared_tmp):
    """A 1D PINN case with fewer cells than ranks (a rank owns no cell, no quadrature point, no
    dof) runs to the end: serially, 2 cells on 3 ranks give the loss of 1 rank after 2
    iterations (relative 1e-12, measured 8e-15; plain NGD with λ = 1e-2: the case's λ = 1e-10
    turns round-off into 4e-7); under mpirun, 1 cell on the suite's ranks runs."""
    base = ["run", str(TALK), "--iterations", "2", "--quiet"]
    for item in ("optimizer.damping=1e-2", "optimizer.momentum='none'"):
        base += ["--set", item]
    if comm.size > 1:
        folder = shared_tmp / "one-cell"
        args = [*base, "--set", "mesh.cells=1", "--set", f"output.folder='{folder}'"]
        assert main(args) == 0
        assert np.isfinite(json.loads((folder / "summary.json").read_text())["loss"])
        return
    losses = []
    for ranks in (1, 3):
        folder = shared_tmp / f"ranks{ranks}"
        args = [*base, "--set", "mesh.cells=2", "--set", f"output.folder='{folder}'"]
        result = launch(ranks, args)
        assert result.returncode == 0, result.stderr[-2000:]
        losses.append(json.loads((folder / "summary.json").read_text())["loss"])
    assert abs(losses[0] - losses[1]) <= 1e-12 * abs(losses[0]), losses


FIELD_AS_LOG = (
    "model.coefficient='exp'",
    "parameter.initial='0'",
    "parameter.truth='0.5*cos(pi*x)*cos(pi*y)'",
)


@pytest.mark.parametrize(
    "kind",
    [
        "ngd",
        pytest.param("adam", marks=pytest.mark.slow),
        pytest.param("lbfgs", marks=pytest.mark.slow),
        "tao-nls",
        pytest.param("tao-lmvm", marks=pytest.mark.slow),
    ],
)
def test_two_runs_give_the_same_history(comm, shared_tmp, kind):
    """With the repeatable solver (``model.solver = "superlu_dist"``) every optimizer kind
    repeats its iterates to the bit on 1 rank, and on 2 ranks all but TAO's LMVM (SuperLU_DIST's
    parallel factorisation is static; the default MUMPS schedules dynamically and 2-rank TAO runs
    differed). On 3 or more ranks SuperLU_DIST's solves sum in the order messages arrive
    (1e-16 apart from run to run, measured), and on 2 ranks TAO's LMVM runs differ by 8e-15
    after 3 iterations in 3 of 4 launches (the source not isolated): there the histories agree
    to 1e-9, relative (measured 4e-14)."""
    histories = []
    for label in ("first", "second"):
        folder = shared_tmp / label
        args = ["run", str(LSHAPE), "--iterations", "3", "--quiet"]
        for item in (
            f"optimizer.kind='{kind}'",
            "optimizer.stop='none'",
            "regularization.alpha=0.1",
            "model.solver='superlu_dist'",
            f"output.folder='{folder}'",
            # the finite-element field as log κ (no step of L-BFGS can make κ ≤ 0)
            *(FIELD_AS_LOG if kind.startswith("tao") else ()),
        ):
            args += ["--set", item]
        assert main(args) == 0
        comm.Barrier()
        with open(folder / "history.csv", newline="") as stream:
            rows = list(csv.DictReader(stream))
        histories.append([[r[k] for k in r if k not in ("time", "elapsed")] for r in rows])
    assert len(histories[0]) >= 2 and len(histories[0]) == len(histories[1])
    if comm.size == 1 or (comm.size == 2 and kind != "tao-lmvm"):
        assert histories[0] == histories[1]
        return
    for first, second in zip(histories[0], histories[1], strict=True):
        assert first[:2] == second[:2]
        a, b = (np.array([float(v) for v in row[2:]]) for row in (first, second))
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=0.0, equal_nan=True)


class _Payload:
    """Unpickling this creates a file: a checkpoint that executed code would leave it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (str(self.marker), "w"))


def checkpointed(folder: Path, *extra: str) -> list[str]:
    return [
        "run",
        str(HOLE),
        "--quiet",
        "--set",
        f"output.folder='{folder}'",
        "--set",
        "output.checkpoint_every=1",
        "--set",
        "optimizer.stop='none'",
        *extra,
    ]


def test_a_crafted_checkpoint_cannot_run_code(comm, shared_tmp, capsys):
    """A checkpoint whose arrays hold a pickle (that would create a file when loaded) is
    refused with one message, and the file is not created."""
    folder = shared_tmp / "crafted"
    assert main([*checkpointed(folder), "--iterations", "1"]) == 0
    comm.Barrier()
    marker = shared_tmp / "executed"
    if comm.rank == 0:
        path = folder / "checkpoint.npz"
        with np.load(path, allow_pickle=False) as stored:
            arrays = {k: stored[k] for k in stored.files}
        arrays["a0"] = np.array([_Payload(marker)], dtype=object)
        with open(path, "wb") as stream:
            np.savez(stream, **arrays)
    comm.Barrier()
    assert main([*checkpointed(folder), "--iterations", "2", "--resume"]) == 2
    err = capsys.readouterr().err
    assert ("not a natinv checkpoint" in err) == (comm.rank == 0)
    assert not marker.exists()


def test_resume_refuses_a_checkpoint_of_other_settings_and_says_what_differs(
    comm, shared_tmp, capsys
):
    """After 1 checkpointed iteration: resuming with another optimizer kind, another network
    or other data is refused, naming the part that differs; more iterations are fine; a pickle
    checkpoint of an older natinv is named and not loaded."""
    folder = shared_tmp / "resume"
    assert main([*checkpointed(folder), "--iterations", "1"]) == 0
    comm.Barrier()
    data = shared_tmp / "other.csv"
    if comm.rank == 0:
        lines = (HOLE.parent / "data" / "diffusion_hole.csv").read_text().splitlines()
        head, *rows = lines
        first = rows[0].split(",")
        first[2] = repr(float(first[2]) * 1.01)
        data.write_text("\n".join([head, ",".join(first), *rows[1:]]) + "\n")
    comm.Barrier()
    for extra, part in (
        (["--set", "optimizer.kind='adam'"], "optimizer"),
        (["--set", "parameter.network=[2, 8, 1]"], "network"),
        (["--set", f"data.sensors='{data}'"], "data"),
    ):
        assert main([*checkpointed(folder, *extra), "--iterations", "2", "--resume"]) == 2
        err = capsys.readouterr().err
        assert (f"{part} differs" in err) == (comm.rank == 0), err
    assert main([*checkpointed(folder), "--iterations", "2", "--resume"]) == 0
    assert len(read_checkpoint(folder)["history"]) == 2
    comm.Barrier()
    if comm.rank == 0:
        (folder / "checkpoint.npz").rename(folder / "checkpoint.pkl")
    comm.Barrier()
    assert main([*checkpointed(folder), "--iterations", "3", "--resume"]) == 2
    err = capsys.readouterr().err
    assert ("pickles are not loaded" in err) == (comm.rank == 0)


def test_a_second_run_into_a_held_folder_is_refused(comm, shared_tmp, capsys):
    """While one run holds an output folder, another run into it stops before its first
    iteration with one message; once released, the folder can be used again."""
    from natinv.output import claim_folder

    folder = shared_tmp / "held"
    args = ["run", str(HOLE), "--iterations", "1", "--quiet", "--set", f"output.folder='{folder}'"]
    with claim_folder(comm, folder):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert ("another natinv run is writing" in err) == (comm.rank == 0)
        assert not (folder / "history.csv").exists()
    assert main(args) == 0


def test_result_files_get_the_permissions_of_the_umask(comm, shared_tmp):
    folder = shared_tmp / "modes"
    args = ["run", str(HOLE), "--iterations", "1", "--quiet", "--set", f"output.folder='{folder}'"]
    assert main(args) == 0
    mask = os.umask(0o022)
    os.umask(mask)
    for name in ("history.csv", "summary.json", "fields.png"):
        assert (folder / name).stat().st_mode & 0o777 == 0o666 & ~mask, name


@pytest.mark.parametrize(
    ("setting", "fragment"),
    [
        ("model.source='1/0'", "model.source: '1/0' is not finite"),
        ("parameter.truth='1/(x-x)'", "parameter.truth: '1/(x-x)' is not finite"),
        ("model.source='9**9**9*x'", "is not finite"),
        ("model.source='" + "+".join(["x"] * 2500) + "'", "characters (at most"),
        ("parameter.truth='" + "(" * 80 + "1 + x" + ")" * 80 + "'", None),
    ],
    ids=["division by zero", "nan truth", "huge power", "long formula", "parentheses"],
)
def test_formulas_are_checked_on_the_mesh_before_anything_runs(
    comm, shared_tmp, capsys, setting, fragment
):
    """A formula that is infinite or NaN on the mesh, or too large to evaluate, ends with one
    line naming its key; nothing is written. (Redundant parentheses are fine.)"""
    folder = shared_tmp / "formula"
    args = ["run", str(HOLE), "--iterations", "1", "--quiet"]
    args += ["--set", setting, "--set", f"output.folder='{folder}'"]
    code = main(args)
    err = capsys.readouterr().err
    if fragment is None:
        assert code == 0
        return
    assert code == 2
    assert (fragment in err) == (comm.rank == 0), err
    comm.Barrier()
    assert not folder.exists()


def test_synthesize_never_overwrites_data_unasked(comm, shared_tmp, capsys):
    """``synthesize`` refuses a case without a [synthesize] table and a forward case, and
    overwrites an existing file only with --force."""
    target = shared_tmp / "synthetic.csv"
    base = ["synthesize", str(HOLE), "--set", f"data.sensors='{target}'"]
    base += ["--set", "synthesize.refine=0", "--set", "synthesize.layout='random:10'"]
    assert main(base) == 0
    comm.Barrier()
    first = target.read_text()
    assert main([*base, "--set", "seed=3"]) == 2
    assert ("pass --force" in capsys.readouterr().err) == (comm.rank == 0)
    assert target.read_text() == first
    assert main([*base, "--set", "seed=3", "--force"]) == 0
    comm.Barrier()
    assert target.read_text() != first
    stripped = shared_tmp / "plain.toml"
    if comm.rank == 0:
        text = HOLE.read_text()
        start = text.index("[synthesize]")
        end = text.index("\n[", start + 1)
        stripped.write_text(text[:start] + text[end + 1 :])
    comm.Barrier()
    mesh = ROOT / "meshes" / "plate_with_hole.msh"
    args = ["--set", f"data.sensors='{target}'", "--set", f"mesh.file='{mesh}'"]
    assert main(["synthesize", str(stripped), *args]) == 2
    assert ("no [synthesize] table" in capsys.readouterr().err) == (comm.rank == 0)
    assert main(["synthesize", str(TALK)]) == 2
    assert ("has no measurements to make" in capsys.readouterr().err) == (comm.rank == 0)


def test_case_files_that_are_not_case_files_are_named(comm, shared_tmp, capsys):
    """A folder, a binary file and an empty file given as the case: one line naming each."""
    binary, empty = shared_tmp / "binary.toml", shared_tmp / "empty.toml"
    if comm.rank == 0:
        binary.write_bytes(bytes(range(256)))
        empty.write_text("")
    comm.Barrier()
    for path, fragment in (
        (shared_tmp, "a folder, not a case file"),
        (binary, "not a text file"),
        (empty, "an empty case file"),
    ):
        assert main(["run", str(path)]) == 2
        err = capsys.readouterr().err
        assert (f"{path}: {fragment}" in err) == (comm.rank == 0), err


def test_help_and_case_errors_do_not_load_torch_or_dolfinx(comm):
    """`natinv --help`, `natinv run --help` and a case-file error import neither torch nor
    DOLFINx (they take seconds to load; the answer should not)."""
    if comm.rank != 0:
        comm.Barrier()
        return
    probe = (
        "import sys\n"
        "from natinv.cli import main\n"
        "for argv in (['--help'], ['run', '--help'], ['run', 'missing.toml']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(sorted(m for m in ('torch', 'dolfinx', 'matplotlib') if m in sys.modules))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "HYDRA_"))}
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=ROOT
    )
    comm.Barrier()
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
    assert "missing.toml: no such case file" in result.stderr


def test_check_validates_a_case_without_running_it(comm, shared_tmp, capsys):
    """`natinv check` reads the mesh and the data and locates the sensors, prints what it
    found and writes nothing; a sensor outside the mesh is one error naming it."""
    folder = shared_tmp / "never"
    assert main(["check", str(HOLE), "--set", f"output.folder='{folder}'"]) == 0
    out = capsys.readouterr().out
    if comm.rank == 0:
        assert "valid" in out and "80 point values" in out and "1141 parameters" in out
    assert out.count("  mesh ") == (1 if comm.rank == 0 else 0)  # printed once, by rank 0
    comm.Barrier()
    assert not folder.exists()
    outside = shared_tmp / "outside.csv"
    if comm.rank == 0:
        outside.write_text("x,y,value,sigma\n0.5,0.2,1.0,0.1\n40.0,40.0,1.0,0.1\n")
    comm.Barrier()
    assert main(["check", str(HOLE), "--set", f"data.sensors='{outside}'"]) == 2
    err = capsys.readouterr().err
    assert ("outside" in err and "40" in err) == (comm.rank == 0), err


@pytest.mark.slow
def test_resume_on_another_rank_count_continues_the_run(comm, shared_tmp):
    """2 iterations on N ranks, then --resume to 4 on another rank count (serially: 1 then 2
    ranks; under mpirun: the suite's ranks, then rank 0 alone) gives the losses of 4 straight
    iterations to relative 1e-8 (measured 2e-10: the rank counts sum in other orders)."""
    from mpi4py import MPI

    from natinv.cases import load_case
    from natinv.runner import run

    def case(folder: Path):
        settings = ["optimizer.stop='none'", "output.checkpoint_every=2"]
        return load_case(HOLE, [*settings, f"output.folder='{folder}'"])

    straight, resumed = shared_tmp / "straight", shared_tmp / "resumed"
    run(case(straight), comm, quiet=True, iterations=4)
    run(case(resumed), comm, quiet=True, iterations=2)
    comm.Barrier()
    if comm.size == 1:
        args = ["run", str(HOLE), "--iterations", "4", "--resume", "--quiet"]
        for item in ("optimizer.stop='none'", f"output.folder='{resumed}'"):
            args += ["--set", item]
        result = launch(2, args)
        assert result.returncode == 0, result.stderr[-2000:]
    elif comm.rank == 0:
        run(case(resumed), MPI.COMM_SELF, quiet=True, iterations=4, resume=True)
    comm.Barrier()
    losses = []
    for folder in (straight, resumed):
        with open(folder / "history.csv", newline="") as stream:
            losses.append(np.array([float(r["loss"]) for r in csv.DictReader(stream)]))
    assert losses[1].size == 4
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-8)


def test_zero_iterations_write_the_start(comm, shared_tmp):
    """`--iterations 0` evaluates the start and writes the results: no history rows, the
    misfit of the initial field in the summary."""
    folder = shared_tmp / "zero"
    args = ["run", str(HOLE), "--iterations", "0", "--quiet", "--set", f"output.folder='{folder}'"]
    assert main(args) == 0
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["iterations"] == 0 and summary["misfit"] > summary["discrepancy_level"]
    assert (folder / "history.csv").read_text().strip() == "optimizer"


@pytest.mark.parametrize("chosen", [False, True], ids=["default", "more-thuente-chosen"])
def test_an_inadmissible_trial_point_ends_a_tao_run_cleanly(
    comm, shared_tmp, chosen, petsc_options
):
    """TAO L-BFGS on κ itself (no positivity) steps to κ ≤ 0 at once: the model refuses the
    trial point (a SolveError, an infinite loss for the line search). By default the run goes
    on from its last iterate with Armijo backtracking and takes its three iterations; with the
    Moré–Thuente line search chosen on the command line it stops with TAO's own reason — in
    neither case a PETSc error and a traceback. (``petsc_options`` removes the options the
    command line added.)"""
    folder = shared_tmp / f"lmvm-{chosen}"
    args = ["run", str(LSHAPE), "--iterations", "3", "--quiet"]
    for item in ("optimizer.kind='tao-lmvm'", "optimizer.stop='none'", f"output.folder='{folder}'"):
        args += ["--set", item]
    if chosen:
        args += ["--", "-natinv_tao_tao_ls_type", "more-thuente"]
    assert main(args) == 0
    summary = json.loads((folder / "summary.json").read_text())
    if chosen:
        assert summary["stopped"] == "DIVERGED_LS_FAILURE"
    else:
        assert summary["stopped"] == "iterations" and summary["iterations"] == 3, summary
        assert np.isfinite(summary["misfit"])


def test_only_solve_errors_read_as_an_infinite_loss(comm, monkeypatch):
    """`InverseObjective.value` returns inf where the model cannot be solved, and lets any
    other collective error (a shape or contract bug) through."""
    from natinv import parallel
    from natinv.cases import load_case
    from natinv.problems import build_problem

    built = build_problem(load_case(HOLE), comm)
    objective = built.objective
    theta = objective.field.parameters
    assert np.isfinite(objective.value(theta))

    def refuse(values):
        raise parallel.SolveError("diffusion: κ ≤ 0")

    monkeypatch.setattr(built.problem, "value", refuse)
    assert objective.value(theta) == float("inf")

    def broken(values):
        raise parallel.CollectiveError("parameter has 3 owned entries, expected 778")

    monkeypatch.setattr(built.problem, "value", broken)
    with pytest.raises(parallel.CollectiveError, match="owned entries"):
        objective.value(theta)
    built.close()


def test_a_case_error_seen_by_one_rank_stops_every_rank(comm, shared_tmp, monkeypatch, capsys):
    """A case file that the last rank cannot read (as on a node that does not share the
    folder) ends with exit code 2 and one error line on every rank, not with the other ranks
    waiting in the run; no result folder is made."""
    from natinv import cases

    real = cases.load_case

    def unreadable_on_the_last_rank(path, overrides=()):
        if comm.rank == comm.size - 1:
            raise cases.CaseError(f"{path}: no such case file")
        return real(path, overrides)

    monkeypatch.setattr(cases, "load_case", unreadable_on_the_last_rank)
    folder = shared_tmp / "never"
    for command in ("run", "check", "compare"):
        args = [command, str(HOLE), "--set", f"output.folder='{folder}'"]
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.count("no such case file") == (1 if comm.rank == 0 else 0), err
    comm.Barrier()
    assert not folder.exists()


@pytest.mark.parametrize("raised", [False, True], ids=["failed-reason", "petsc-error"])
def test_a_model_is_usable_again_after_a_failed_factorisation(comm, petsc_options, raised):
    """κ = 0 on part of the domain (no positivity check) makes the LU factorisation fail —
    as a converged reason, or as a PETSc error inside the solve when the KSP is told to raise
    (which leaves the right-hand side locked for reading). Either way the failure is one
    SolveError on every rank, and the next solve with an admissible κ gives the same state as
    a model that never failed (no stale factors, no locked vector)."""
    import dolfinx

    from natinv import models, parallel

    mesh = dolfinx.mesh.create_unit_square(comm, 8, 8)
    V = dolfinx.fem.functionspace(mesh, ("Lagrange", 2))
    W = dolfinx.fem.functionspace(mesh, ("Lagrange", 1))
    owned = W.dofmap.index_map.size_local
    x = W.tabulate_dof_coordinates()[:owned, 0]
    prefix = f"fail_{int(raised)}_"
    if raised:
        petsc_options[f"{prefix}ksp_error_if_not_converged"] = 1

    def model() -> models.Model:
        m = dolfinx.fem.Function(W)
        bcs = [models.dirichlet(V)]
        return models.diffusion(V, m, f=1.0, bcs=bcs, check=None, options_prefix=prefix)

    failing, fresh = model(), model()
    good = 1.0 + x
    fresh.set_parameter(good)
    reference = np.array(fresh.solve().x.array)
    failing.set_parameter(good)
    failing.solve()
    for _ in range(2):
        failing.set_parameter(np.where(x > 0.3, 0.0, 1.0))
        with pytest.raises(parallel.SolveError, match="solve failed"):
            failing.solve()
        failing.set_parameter(good)
        state = failing.solve().x.array
        assert np.max(np.abs(state - reference)) <= 1e-12 * np.max(np.abs(reference))
    failing.destroy()
    fresh.destroy()


@pytest.mark.parametrize(
    "step, momentum",
    [
        ("log-grid", "none"),
        ("armijo", "none"),
        pytest.param("log-grid", "natural-nesterov", marks=pytest.mark.slow),
        pytest.param("armijo", "natural-heavy-ball", marks=pytest.mark.slow),
        pytest.param("armijo", "nesterov", marks=pytest.mark.slow),
    ],
)
def test_every_step_rule_reads_an_unsolvable_trial_as_an_infinite_loss(
    comm, shared_tmp, step, momentum
):
    """On the L-shape, the model is told to refuse every field farther than half the first
    full step from the start (a SolveError on every rank, as an inadmissible κ or a failed
    factorisation gives). Each step rule, with and without (look-ahead) momentum, reads those
    trials as an infinite loss: six steps run, every loss is finite and none rises, every
    accepted field lies inside the allowed radius, and the loss goes down."""
    from natinv import parallel, runner
    from natinv.cases import load_case
    from natinv.problems import build_problem

    overrides = [
        f"optimizer.step='{step}'",
        f"optimizer.momentum='{momentum}'",
        "optimizer.beta=0.5",
        "optimizer.stop='none'",
    ]
    overrides += [f"output.folder='{shared_tmp / 'unused'}'"]
    case = load_case(LSHAPE, overrides)
    built = build_problem(case, comm)
    objective = built.objective
    theta0 = objective.field.parameters
    start = np.array(objective.field.values(theta0))
    optimizer, owned = runner._optimizer(case, built)
    optimizer.step()  # the free first step, to size the radius
    radius = 0.5 * parallel.allreduce_max(
        comm, float(np.max(np.abs(objective.field.values(optimizer.theta) - start), initial=0.0))
    )
    for obj in owned:
        obj.destroy()
    assert radius > 0
    refused = [0]

    def near(m):  # the model's admissibility check (one verdict on every rank)
        local = m.x.array[: start.size]
        far = parallel.allreduce_max(comm, float(np.max(np.abs(local - start), initial=0.0)))
        if far > radius:
            refused[0] += 1
            return f"κ moved {far:.3g} from the start (at most {radius:.3g})"
        return None

    built.model.check = near
    objective.field.set_parameters(theta0)
    optimizer, owned = runner._optimizer(case, built)
    losses = [objective.value(theta0)]
    for _ in range(6):
        record = optimizer.step()
        losses.append(record["loss"])
        values = objective.field.values(optimizer.theta)
        moved = parallel.allreduce_max(comm, float(np.max(np.abs(values - start), initial=0.0)))
        assert moved <= radius
    assert refused[0] > 0 and np.all(np.isfinite(losses))
    assert all(b <= a for a, b in itertools.pairwise(losses)), losses
    assert losses[-1] < losses[0], losses
    for obj in owned:
        obj.destroy()
    built.close()


def test_a_folder_holds_the_results_of_one_run(comm, shared_tmp, capsys):
    """A run into a folder that holds a finished run's results is refused before it starts,
    naming --resume and --force, and changes nothing; --resume continues from the finished
    run's last iterate (a checkpoint is written at the end); --force removes the old results
    before the new run starts. No lock file is left behind by any of them."""
    from natinv.output import LOCK

    folder = shared_tmp / "one-run"
    base = ["run", str(HOLE), "--quiet", "--set", f"output.folder='{folder}'"]
    base += ["--set", "optimizer.stop='none'"]
    assert main([*base, "--iterations", "2"]) == 0
    comm.Barrier()
    before = (folder / "summary.json").read_bytes()
    assert read_checkpoint(folder)["history"][-1]["iteration"] == 2
    assert main([*base, "--iterations", "1"]) == 2
    err = capsys.readouterr().err
    if comm.rank == 0:
        assert "holds the results of another run (summary.json, history.csv, checkpoint.npz" in err
        assert "--resume" in err and "--force" in err
    assert (folder / "summary.json").read_bytes() == before
    assert main([*base, "--iterations", "3", "--resume"]) == 0
    comm.Barrier()
    assert json.loads((folder / "summary.json").read_text())["iterations"] == 3
    if comm.rank == 0:
        (folder / "mu_errors.png").write_bytes(b"an older run's figure")
    comm.Barrier()
    assert main([*base, "--iterations", "1", "--force"]) == 0
    comm.Barrier()
    assert json.loads((folder / "summary.json").read_text())["iterations"] == 1
    assert not (folder / "mu_errors.png").exists()
    assert not (folder / LOCK).exists()
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")]


def test_a_full_disk_is_one_error_and_keeps_the_previous_results(
    comm, shared_tmp, capsys, monkeypatch
):
    """With the disk reported full, a resumed run that would write its VTX folders stops with
    one 'no space left on device' line on every rank (ADIOS2 would abort or hang), and the
    folder keeps the previous complete results: the same summary, the same parameter.bp, no
    temporary files. (Files written by natinv itself report a full disk through the OS error
    of the write, tested by the unwritable-folder cases.)"""
    import shutil
    from collections import namedtuple

    from natinv import output

    folder = shared_tmp / "full"
    base = ["run", str(HOLE), "--quiet", "--set", f"output.folder='{folder}'"]
    base += ["--set", "optimizer.stop='none'"]
    assert main([*base, "--iterations", "1"]) == 0
    comm.Barrier()
    summary = (folder / "summary.json").read_bytes()
    vtx = sorted(p.name for p in (folder / "parameter.bp").iterdir())
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9, 4096))
    assert main([*base, "--iterations", "2", "--resume"]) == 2
    err = capsys.readouterr().err
    assert (err.count("no space left on device") == 1) == (comm.rank == 0), err
    assert (folder / "summary.json").read_bytes() == summary
    assert sorted(p.name for p in (folder / "parameter.bp").iterdir()) == vtx
    comm.Barrier()
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")]
    assert output.results_in(folder)


@pytest.mark.slow
def test_a_run_killed_at_any_moment_leaves_the_results_of_one_run(comm, shared_tmp):
    """A finished run A (3 iterations), then runs B with --force (6 iterations, a checkpoint
    every 2) on 1 and 2 ranks, each killed (SIGKILL to the whole process group) at a moment
    drawn over B's duration: afterwards the folder holds A's results untouched, or none of
    them (B's alone, complete when B's summary is there), never a mix; the next run cleans the
    debris a killed write leaves (temporary files) and no lock survives it. Launches its own
    mpirun, so it runs in the serial pass (the children run on 1 and 2 ranks)."""
    import signal
    import time

    from natinv.output import LOCK, RESULTS

    if comm.size > 1:
        pytest.skip("launches and kills its own mpirun of 1 and 2 ranks: runs serially")
    folder = shared_tmp / "killed"
    settings = ["optimizer.stop='none'", "output.checkpoint_every=2", f"output.folder='{folder}'"]
    base = ["run", str(HOLE), "--quiet", *[a for s in settings for a in ("--set", s)]]
    assert launch(1, [*base, "--iterations", "3"]).returncode == 0
    first = {name: _digest(folder / name) for name in RESULTS if (folder / name).exists()}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "HYDRA_", "MPIR_"))}
    env["OMP_NUM_THREADS"] = "1"
    start = time.perf_counter()
    full = launch(1, [*base, "--iterations", "6", "--force"])
    assert full.returncode == 0, full.stderr[-2000:]
    duration = time.perf_counter() - start
    rng = np.random.default_rng(7)
    for trial, moment in enumerate(rng.uniform(0.3, 1.0, 6) * duration):
        assert launch(1, [*base, "--iterations", "3", "--force"]).returncode == 0
        first = {name: _digest(folder / name) for name in RESULTS if (folder / name).exists()}
        ranks = 1 + trial % 2
        command = [str(MPIRUN), "-n", str(ranks), sys.executable, "-m", "natinv", *base]
        command += ["--iterations", "6", "--force"]
        child = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(moment)
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
        time.sleep(0.5)  # (the ranks of the group are gone with it)
        now = {name: _digest(folder / name) for name in RESULTS if (folder / name).exists()}
        kept = {name for name in now if first.get(name) == now[name]}
        assert kept in (set(), set(first)), (trial, moment, kept, set(now))
        if kept == set(first):
            assert set(now) == set(first), (trial, moment, set(now))
        if "summary.json" in now and not kept:
            assert json.loads((folder / "summary.json").read_text())["iterations"] == 6
            assert set(now) == set(first), (trial, moment, set(now))
    assert launch(2, [*base, "--iterations", "1", "--force"]).returncode == 0
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")]
    assert not (folder / LOCK).exists()


def _digest(path: Path) -> str:
    """A file's bytes, or a folder's files' names and bytes, as one digest."""
    import hashlib

    digest = hashlib.sha256()
    for part in sorted(path.rglob("*")) if path.is_dir() else [path]:
        if part.is_file():
            digest.update(str(part.relative_to(path.parent)).encode() + part.read_bytes())
    return digest.hexdigest()


INJECT = """
import sys
from natinv import runner
from natinv.cli import main

real = runner.build_problem


def build(case, comm):
    if comm.rank == 0:
        raise {error}
    return real(case, comm)


runner.build_problem = build
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize(
    "error",
    [
        pytest.param("MemoryError()", marks=pytest.mark.slow),
        pytest.param("RuntimeError('a defect')", marks=pytest.mark.slow),
    ],
)
def test_an_error_on_one_rank_ends_every_rank(comm, shared_tmp, error):
    """Rank 0 alone runs out of memory (or meets a defect) while building the problem: on 1,
    2 and 3 ranks the run ends within the timeout (no rank left in a collective), out of
    memory as one 'natinv: error: out of memory' line and no traceback, a defect with its
    traceback. Launches its own mpirun, so it runs in the serial pass."""
    if comm.size > 1:
        pytest.skip("launches its own mpirun of 1, 2 and 3 ranks (an abort ends them): serially")
    script = shared_tmp / "inject.py"
    script.write_text(INJECT.format(error=error))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "HYDRA_", "MPIR_"))}
    env["OMP_NUM_THREADS"] = "1"
    for ranks in (1, 2, 3):
        command = ["timeout", "-s", "KILL", str(HANG), str(MPIRUN), "-n", str(ranks)]
        command += [sys.executable, str(script), "run", str(HOLE), "--quiet"]
        command += ["--set", f"output.folder='{shared_tmp / 'never'}'"]
        result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
        assert result.returncode not in (0, 137), (ranks, result.returncode)
        if error.startswith("MemoryError"):
            assert result.stderr.count("natinv: error: out of memory") == 1, result.stderr
            assert "Traceback" not in result.stderr
        else:
            assert "RuntimeError: a defect" in result.stderr


def test_a_network_too_large_for_the_memory_is_refused_before_it_is_built(
    comm, shared_tmp, capsys, monkeypatch
):
    """With 2 MB per rank allowed (NATINV_MAX_MEMORY_GB), the headline case's Jacobian and M·J
    (778 rows × 1141 parameters: 14 MB on one rank, 7-8 MB on each of two, 5 on each of
    three) do not fit: `natinv check` and `natinv run` each end
    with one error line naming the estimate and the budget, before anything is allocated, and
    no result folder is made; with 10 GB both go on."""
    folder = shared_tmp / "too-large"
    monkeypatch.setenv("NATINV_MAX_MEMORY_GB", "0.002")
    for command in ("check", "run"):
        args = [command, str(HOLE), "--set", f"output.folder='{folder}'"]
        assert main([*args, *(["--iterations", "1", "--quiet"] if command == "run" else [])]) == 2
        err = capsys.readouterr().err
        if comm.rank == 0:
            assert err.count("natinv: error:") == 1, err
            assert "natural gradient with 1141 parameters and 778 rows: the run needs about" in err
            assert "the Jacobian J and M·J " in err and "more than the 2 MB available" in err
        comm.Barrier()
        assert not folder.exists()
    monkeypatch.setenv("NATINV_MAX_MEMORY_GB", "10")
    assert main(["check", str(HOLE), "--set", f"output.folder='{folder}'"]) == 0


def test_check_estimates_what_a_long_transient_run_needs(comm, shared_tmp, capsys):
    """`natinv check` of the heat case with ten million steps (a run that would take hours)
    says so before anything runs: the memory per rank of J, of G and of the stored states
    (one in every √N-ish kept), and one timed step times the steps of a trajectory; it
    writes nothing."""
    import re

    folder = shared_tmp / "never"
    settings = ["model.steps=10000000", "model.dt=2e-8", f"output.folder='{folder}'"]
    args = ["check", str(ROOT / "cases" / "heat_transient.toml")]
    assert main([*args, *[a for s in settings for a in ("--set", s)]]) == 0
    out = capsys.readouterr().out
    if comm.rank == 0:
        assert re.search(
            r"memory +per rank: .* for J and M·J, .* for G if formed, .* for the "
            r"stored states \(1 in \d+ kept\); .* available per rank",
            out,
        ), out
        found = re.search(
            r"about ([0-9.e-]+) s per step \(one step timed\): ([0-9.]+) (h|d) per "
            r"trajectory of 10000000 steps",
            out,
        )
        assert found is not None, out
    comm.Barrier()
    assert not folder.exists()


def test_a_long_iteration_says_where_it_is(capsys, monkeypatch):
    """While reporting is on, a tick prints on rank 0 once the interval has passed since the
    iteration began (and not before, nor with reporting off), with what the loop is doing."""
    from mpi4py import MPI

    from natinv import progress

    clock = [100.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: clock[0])
    progress.tick("silent: reporting is off")
    with progress.reporting(MPI.COMM_SELF, interval=5.0):
        progress.tick("too early")
        clock[0] += 6.0
        progress.tick(lambda: "heat: state step 12 of 10000000")
        clock[0] += 1.0
        progress.tick("too soon after the last line")
    out = capsys.readouterr().out
    assert out.splitlines() == ["      … heat: state step 12 of 10000000 (6 s into the iteration)"]
