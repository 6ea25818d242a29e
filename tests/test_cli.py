"""The command line: ``natinv info`` and the fitting demo's outputs."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from natinv.cli import info, main


def test_info_names_every_component(comm, capsys):
    report = info(comm)
    for key in ("natinv", "dolfinx", "petsc", "petsc packages", "torch", "mpi", "ranks"):
        assert report[key]
    assert report["ranks"] == str(comm.size)
    assert "scalapack" in report["petsc packages"]
    assert main(["info"]) == 0
    printed = capsys.readouterr().out
    assert ("petsc" in printed) == (comm.rank == 0)


def test_demo_writes_history_summary_and_figures(comm, shared_tmp):
    out = shared_tmp / "demo"
    code = main(
        [
            "demo",
            "--out",
            str(out),
            "--cells",
            "8",
            "--widths",
            "2,12,12,1",
            "--iterations",
            "8",
            "--quiet",
        ]
    )
    assert code == 0
    comm.Barrier()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ranks"] == comm.size
    assert summary["ngd"]["iterations"] == 8  # no early stop: every step decreased the loss
    assert summary["ngd"]["relative_error"] < summary["initial_relative_error"]
    with open(out / "history.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert {r["optimizer"] for r in rows} == {"NGD (natural, log-grid)", "Adam"}
    for name in ("convergence.png", "fields.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["demo", "--widths", "two,three"], "comma-separated integers"),
        (["demo", "--cells", "0"], "expected an integer >= 1, got 0"),
        (["demo", "--iterations", "-3"], "expected an integer >= 0, got -3"),
        (["demo", "--metric", "w2"], "invalid choice"),
        (["compile"], "invalid choice"),
    ],
)
def test_bad_arguments_exit_with_one_usage_error_on_rank_zero(comm, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert (message in capsys.readouterr().err) == (comm.rank == 0)


def test_a_bad_network_is_one_error_line_and_no_result(comm, shared_tmp, capsys):
    """A network whose input width does not match the mesh: exit code 2 on every rank, one
    'natinv: error' line on rank 0, and no result folder written."""
    out = shared_tmp / "bad"
    code = main(["demo", "--out", str(out), "--cells", "4", "--widths", "3,4,1", "--quiet"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("natinv: error:") == (1 if comm.rank == 0 else 0)
    comm.Barrier()
    assert not out.exists()


def test_petsc_options_after_a_double_dash_reach_the_solver(comm, shared_tmp, petsc_options):
    """``-- -natinv_gram_method cutoff`` overrides the default Cholesky of ``--method``."""
    code = main(
        [
            "demo",
            "--out",
            str(shared_tmp / "cg"),
            "--cells",
            "6",
            "--widths",
            "2,6,1",
            "--iterations",
            "3",
            "--quiet",
            "--",
            "-natinv_gram_method",
            "cutoff",
        ]
    )
    assert code == 0
    comm.Barrier()
    summary = json.loads((shared_tmp / "cg" / "summary.json").read_text())
    assert summary["ngd"]["solver"]["method"] == "cutoff"  # the option, not --method, decided


def test_synthesize_writes_noisy_sensor_data_of_the_fine_model(comm, shared_tmp):
    """`natinv synthesize`: noise-free data converge under refinement (32 vs 64 cells agree to
    1e-4 of max|u|), and the noise is σ = 1 % of max|u| with standard normal residuals."""
    from natinv.data import read_sensors

    paths = {}
    for name, extra in (
        ("coarse", ["--cells", "32", "--noise", "0"]),
        ("fine", ["--noise", "0"]),
        ("noisy", ["--noise", "0.01", "--sensors", "random:400"]),
        ("clean", ["--noise", "0", "--sensors", "random:400"]),
    ):
        paths[name] = shared_tmp / f"{name}.csv"
        args = ["synthesize", "--truth", "1 + 0.5*x*y", "--out", str(paths[name]), *extra]
        assert main(args) == 0
    coarse, fine = (read_sensors(comm, paths[k], 2) for k in ("coarse", "fine"))
    scale = np.abs(fine.values).max()
    assert np.abs(coarse.values - fine.values).max() <= 1e-4 * scale
    noisy, clean = (read_sensors(comm, paths[k], 2) for k in ("noisy", "clean"))
    sigma = noisy.sigma[0]
    np.testing.assert_allclose(sigma, 0.01 * np.abs(clean.values).max(), rtol=0.05)
    z = (noisy.values - clean.values) / sigma
    assert abs(z.mean()) < 0.15 and abs(z.std() - 1) < 0.15


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--truth", "exp(os)"], "unknown name 'os'"),
        (["--truth", "1", "--model", "wave"], "Unknown model 'wave'"),
        (["--truth", "1", "--sensors", "ring:5"], "Unknown sensor layout"),
        (["--truth", "1", "--noise", "-1"], "Invalid noise level"),
    ],
)
def test_synthesize_rejects_bad_input_by_name(comm, shared_tmp, capsys, args, message):
    out = shared_tmp / "never.csv"
    assert main(["synthesize", "--out", str(out), *args]) == 2
    if comm.rank == 0:
        assert message in capsys.readouterr().err
    assert not out.exists()
