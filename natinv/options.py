"""PETSc options: a unique prefix per solver object and options pushed only while it is set up.

Every natinv object that owns a PETSc solver (a natural-direction solver, a model's KSP, the TAO
baseline) has its own options prefix. Without one from the caller it gets a fresh prefix
(:func:`unique_prefix`: ``natinv_gram_3_``), so options meant for one solver never reach another
in the same process. The command-line interface names its solvers with the documented prefixes
(``natinv_gram_``, ``natinv_model_``, ``natinv_tao_``) so that ``-natinv_gram_method cg`` reaches
the case's solver.

:func:`pushed` puts a solver's own settings into PETSc's options database under its prefix for
the duration of its ``setFromOptions`` and removes them afterwards (DOLFINx's pattern); entries
the user already put there (the command line) win over the pushed ones and stay.

This module imports only petsc4py.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from petsc4py import PETSc

__all__ = ["pushed", "read", "unique_prefix"]

_counter = itertools.count()


def unique_prefix(stem: str) -> str:
    """A prefix no other object of this process has: ``f"{stem}_{n}_"``."""
    return f"{stem}_{next(_counter)}_"


@contextmanager
def pushed(prefix: str, options: Mapping[str, Any]) -> Iterator[PETSc.Options]:
    """``options`` set under ``prefix`` inside the ``with`` block, removed on leaving it.

    An option already in the database (the user's, e.g. from the command line) is neither
    replaced nor removed. Yields the prefixed view of the database.
    """
    database = PETSc.Options()
    added = []
    for key, value in options.items():
        name = f"{prefix}{key}"
        if not database.hasName(name):
            database.setValue(name, value)
            added.append(name)
    try:
        yield PETSc.Options(prefix)
    finally:
        for name in added:
            database.delValue(name)


def read(prefix: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    """``settings`` with each value replaced by the option ``-<prefix><key>`` when it is set
    (the value's type decides how the option is read: str, float, int or bool)."""
    view = PETSc.Options(prefix)
    getters = {str: view.getString, float: view.getReal, int: view.getInt, bool: view.getBool}
    return {key: getters[type(value)](key, value) for key, value in settings.items()}
