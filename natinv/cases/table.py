"""Reading one TOML table of a case file: every key used once, every error naming its path.

This module imports nothing from natinv's compute layer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from natinv.expressions import compile_expression

__all__ = ["CaseError"]


class CaseError(ValueError):
    """A problem in a case file, with its key path."""


_MISSING = object()


class _Table:
    """Reads one TOML table, remembering which keys were used and naming paths in errors."""

    def __init__(self, data: Mapping[str, Any], path: str, source: str) -> None:
        if not isinstance(data, Mapping):
            raise CaseError(f"{source}: {path}: expected a table, got {type(data).__name__}")
        self.data, self.path, self.source = data, path, source
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def fail(self, name: str, message: str) -> CaseError:
        return CaseError(f"{self.source}: {self.key(name)}: {message}")

    def get(self, name: str, default: Any = _MISSING) -> Any:
        self.used.add(name)
        if name not in self.data:
            if default is _MISSING:
                raise self.fail(name, "missing (required)")
            return default
        return self.data[name]

    def table(self, name: str, required: bool = True) -> _Table:
        value = self.get(name, _MISSING if required else {})
        return _Table(value, self.key(name), self.source)

    def number(
        self,
        name: str,
        default: Any = _MISSING,
        low: float = -math.inf,
        high: float = math.inf,
        low_open: bool = False,
        high_open: bool = False,
    ) -> float:
        value = self.get(name, default)
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        if ok:
            ok = (value > low if low_open else value >= low) and (
                value < high if high_open else value <= high
            )
        if not ok:
            left, right = "(" if low_open else "[", ")" if high_open else "]"
            raise self.fail(
                name, f"expected a number in {left}{low:g}, {high:g}{right}, got {value!r}"
            )
        return float(value)

    def integer(self, name: str, default: Any = _MISSING, low: int = 0) -> int:
        value = self.get(name, default)
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= low):
            raise self.fail(name, f"expected an integer >= {low}, got {value!r}")
        return int(value)

    def string(self, name: str, default: Any = _MISSING, choices: tuple[str, ...] = ()) -> str:
        value = self.get(name, default)
        if not isinstance(value, str):
            raise self.fail(name, f"expected a string, got {value!r}")
        if choices and value not in choices:
            raise self.fail(name, f"expected one of {list(choices)}, got {value!r}")
        return value

    def formula(
        self, name: str, default: Any = _MISSING, parameters: tuple[str, ...] = ()
    ) -> str | None:
        value = self.get(name, default)
        if value is None:
            return None
        return self.check_formula(name, value, parameters)

    def check_formula(self, name: str, value: Any, parameters: tuple[str, ...] = ()) -> str:
        """``value`` as the text of a valid formula (numbers become formulas)."""
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = repr(float(value))
        if not isinstance(value, str):
            raise self.fail(name, f"expected a formula of x, y (a string), got {value!r}")
        try:
            compile_expression(value, self.key(name), parameters)
        except ValueError as exc:
            raise CaseError(f"{self.source}: {exc}") from None
        return value

    def file(
        self, name: str, base: Path, default: Any = _MISSING, exists: bool = True
    ) -> Path | None:
        value = self.get(name, default)
        if value is None:
            return None
        if not isinstance(value, str):
            raise self.fail(name, f"expected a file path (a string), got {value!r}")
        path = (base / value).resolve()
        if exists and not path.is_file():
            raise self.fail(name, f"no such file: {path}")
        return path

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise CaseError(
                f"{self.source}: {self.key(unknown[0])}: unknown key"
                + (f" (also {unknown[1:]})" if len(unknown) > 1 else "")
            )
