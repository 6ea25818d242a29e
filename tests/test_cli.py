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


def test_bad_arguments_exit_with_a_usage_error(comm, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--widths", "two,three"])
    assert exit_info.value.code == 2
    assert ("comma-separated integers" in capsys.readouterr().err) == (comm.rank == 0)


def test_petsc_options_after_a_double_dash_reach_the_solver(comm, shared_tmp, petsc_options):
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
    assert petsc_options.getString("natinv_gram_method") == "cutoff"
