"""The command line: ``natinv info`` and the fitting demo's outputs."""

from __future__ import annotations

import csv
import json

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
