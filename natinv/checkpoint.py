"""Checkpoints: data, not code.

A checkpoint is one ``.npz`` file (numpy arrays only, read with ``allow_pickle=False``: loading
it cannot execute anything) holding the arrays of an optimizer's state and a JSON header:

- ``format`` and the natinv ``version`` that wrote it;
- the case's ``name`` and a ``digest`` per part of the case that decides the iterates (mesh and
  its file's bytes, model, network, data settings and the data files' bytes, regularization,
  optimizer settings, seed, forward-problem tables); stopping rules, the iteration limit and
  output settings are not part of it, so a run may be resumed with more iterations;
- the number of ``ranks`` it was written on, the ``history`` so far, the torch RNG ``state``;
- the optimizer state as a tree of dicts and lists whose leaves are numbers, strings, None or
  references to arrays.

:func:`save` writes atomically on rank 0 and shares the outcome; :func:`load` reads on rank 0,
checks, shares the state and raises :class:`~natinv.parallel.CollectiveError` on every rank with
one message that says what differs. This module imports no compute module.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from natinv import parallel
from natinv.cases import Case, InverseCase
from natinv.output import atomic_path
from natinv.parallel import Comm

__all__ = ["FILENAME", "FORMAT", "case_digest", "decode", "encode", "load", "save"]

FORMAT = 1
FILENAME = "checkpoint.npz"
_HEADER = "__header__"


def case_digest(case: Case) -> dict[str, str]:
    """A short digest of each part of ``case`` that changes the iterates (and of the files it
    reads), by part name, so that a mismatch can say what differs."""
    settings = asdict(case)
    optimizer = {
        k: v
        for k, v in settings["optimizer"].items()
        if k not in ("iterations", "stop", "target")  # when to stop, not where to go
    }
    parts: dict[str, Any] = {
        "problem": case.problem,
        "seed": case.seed,
        "mesh": [settings["mesh"], _file_digest(case.mesh.file)],
        "optimizer": optimizer,
        "regularization": settings.get("regularization"),
    }
    if isinstance(case, InverseCase):
        files = [case.data.sensors, case.data.averages, case.data.field]
        if case.data.field is not None:
            files.append(case.data.field.with_suffix(".h5"))
        parts.update(
            model=settings["model"],
            network=settings["parameter"],
            data=[settings["data"], [_file_digest(f) for f in files]],
        )
    else:
        parts.update(
            equation=settings["equation"],
            network=settings["solution"],
            parametric=settings["parametric"],
        )
    return {
        name: hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[
            :16
        ]
        for name, value in parts.items()
    }


def _file_digest(path: Path | None) -> str | None:
    if path is None or not path.is_file():
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def encode(tree: Any, arrays: dict[str, npt.NDArray[Any]], where: str = "state") -> Any:
    """``tree`` with every numpy array (and torch tensor) moved into ``arrays`` and replaced by
    ``{"__array__": key}``; tuples become lists. Raises TypeError on anything else that JSON
    cannot hold (a checkpoint holds no objects)."""
    if isinstance(tree, Mapping):
        if not all(isinstance(k, str) for k in tree):
            raise TypeError(f"{where}: keys must be strings")
        return {k: encode(v, arrays, f"{where}.{k}") for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return [encode(v, arrays, f"{where}[{i}]") for i, v in enumerate(tree)]
    if hasattr(tree, "detach") and hasattr(tree, "numpy"):  # a torch tensor
        tree = tree.detach().cpu().numpy()
    if isinstance(tree, np.ndarray):
        if tree.dtype.kind not in "biuf":
            raise TypeError(f"{where}: an array of {tree.dtype} (numbers only)")
        key = f"a{len(arrays)}"
        arrays[key] = np.ascontiguousarray(tree)
        return {"__array__": key}
    if isinstance(tree, np.generic):
        return tree.item()
    if tree is None or isinstance(tree, bool | int | float | str):
        return tree
    raise TypeError(f"{where}: a {type(tree).__name__} cannot be stored in a checkpoint")


def decode(tree: Any, arrays: Mapping[str, npt.NDArray[Any]]) -> Any:
    """The inverse of :func:`encode` (ValueError on a reference to a missing array)."""
    if isinstance(tree, dict):
        if set(tree) == {"__array__"}:
            key = tree["__array__"]
            if not isinstance(key, str) or key not in arrays:
                raise ValueError(f"a reference to a missing array {key!r}")
            return np.array(arrays[key])
        return {k: decode(v, arrays) for k, v in tree.items()}
    if isinstance(tree, list):
        return [decode(v, arrays) for v in tree]
    return tree


def save(
    comm: Comm,
    folder: Path,
    case: Case,
    history: list[dict[str, Any]],
    state: Mapping[str, Any],
    rng: npt.NDArray[np.uint8] | None = None,
) -> Path:
    """Write ``folder/checkpoint.npz`` (rank 0, atomically: a killed run keeps the previous
    one). ``state`` is the optimizer's (or the finite-element field's) state; ``rng`` the torch
    generator's state. Collective; every rank gets the error if rank 0 cannot write."""
    path = folder / FILENAME

    def write() -> None:  # (rank 0: the state is replicated, the files are read once)
        arrays: dict[str, npt.NDArray[Any]] = {}
        header = {
            "format": FORMAT,
            "version": _version(),
            "case": case.name,
            "digest": case_digest(case),
            "ranks": comm.size,
            "optimizer": case.optimizer.kind,
            "history": history,
            "state": encode(dict(state), arrays),
            "rng": encode(rng, arrays, "rng"),
        }
        arrays[_HEADER] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
        with atomic_path(path) as tmp, open(tmp, "wb") as stream:
            np.savez(stream, **arrays)

    parallel.on_rank0(comm, f"{path}: cannot write the checkpoint", write)
    return path


def load(comm: Comm, folder: Path, case: Case) -> dict[str, Any]:
    """The checkpoint in ``folder``, checked against ``case``: a dict with ``history``,
    ``state``, ``rng`` and ``ranks``. Rank 0 reads; every rank gets the result or the same
    error. Collective.

    Raises:
        CollectiveError: no checkpoint, an unreadable or crafted file, another format or
            version, or a checkpoint of another case (naming the parts that differ).
    """
    path = folder / FILENAME
    return parallel.on_rank0(  # type: ignore[return-value]
        comm, f"{path}: cannot resume", lambda: _read(path, case), share=True
    )


def _read(path: Path, case: Case) -> dict[str, Any]:
    if not path.is_file():
        old = path.with_name("checkpoint.pkl")
        hint = (
            f" ({old.name} is a checkpoint of an older natinv: pickles are not loaded, since "
            "loading one can run code; start again)"
            if old.exists()
            else ""
        )
        raise ValueError(f"no checkpoint to resume from{hint}")
    try:
        with np.load(path, allow_pickle=False) as stored:
            arrays = {k: stored[k] for k in stored.files}
        header = json.loads(bytes(arrays.pop(_HEADER)).decode())
        if not isinstance(header, dict):
            raise ValueError("the header is not a table")
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, UnicodeDecodeError) as exc:
        raise ValueError(f"not a natinv checkpoint ({parallel.describe_error(exc)})") from None
    if header.get("format") != FORMAT or header.get("version") != _version():
        raise ValueError(
            f"written by natinv {header.get('version')} (format {header.get('format')}); this is "
            f"natinv {_version()} (format {FORMAT}): start again"
        )
    if header.get("case") != case.name:
        raise ValueError(f"a checkpoint of case {header.get('case')!r}, not {case.name!r}")
    stored_digest = header.get("digest") or {}
    current = case_digest(case)
    differ = sorted(
        k for k in set(current) | set(stored_digest) if current.get(k) != stored_digest.get(k)
    )
    if differ:
        raise ValueError(
            f"written for another version of case {case.name!r}: {', '.join(differ)} "
            f"differ{'s' if len(differ) == 1 else ''} (settings or files); start again "
            "without --resume"
        )
    try:
        return {
            "history": _history(header.get("history")),
            "state": decode(header.get("state"), arrays),
            "rng": decode(header.get("rng"), arrays),
            "ranks": int(header.get("ranks", 0)),
            "optimizer": str(header.get("optimizer")),
        }
    except (TypeError, ValueError) as exc:
        raise ValueError(f"a damaged checkpoint ({exc})") from None


def _history(records: Any) -> list[dict[str, Any]]:
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise ValueError("the history is not a list of records")
    return records


def _version() -> str:
    import natinv

    return natinv.__version__
