"""Reading one typed field of a TOML table, or a `ConfigError` naming it.

Contract: each reader takes the table, the field's name, where the table is
(`[cluster]`, `node 'n1'`) and the directory relative paths are joined to, and
returns the field's value (its default when absent) or raises `ConfigError`
with one line that names the table, the field and what it must be.  The
`*_field` makers bind a default, so a table's fields can be declared as data.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

Table = dict[str, Any]
Reader = Callable[[Table, str, str, "Path | None"], Any]
"""`(table, name, where, base_dir) -> value`."""


class ConfigError(Exception):
    """A cluster file that cannot be used; `str()` is one line saying why."""


def no_unknown_fields(table: Table, allowed: tuple[str, ...] | list[str], where: str) -> None:
    for name in table:
        if name not in allowed:
            raise ConfigError(f"{where}: unknown field {name!r} (allowed: {', '.join(allowed)})")


def string(table: Table, name: str, where: str) -> str:
    """A required non-empty string."""
    if name not in table:
        raise ConfigError(f"{where}: missing field {name!r}")
    value = table[name]
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: {name} must be a non-empty string, not {value!r}")
    return value


def path(table: Table, name: str, where: str, base_dir: Path | None) -> str | None:
    """An optional file name, joined to `base_dir` when relative."""
    value = table.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: {name} must be a non-empty string, not {value!r}")
    return value if base_dir is None else str(base_dir / value)


def port(value: Any, name: str, where: str) -> int:
    if type(value) is not int or not 1 <= value <= 65535:
        raise ConfigError(f"{where}: {name} must be an integer from 1 to 65535, not {value!r}")
    return value


def integer(table: Table, name: str, where: str, default: int) -> int:
    value = table.get(name, default)
    if type(value) is not int:
        raise ConfigError(f"{where} {name} must be an integer, not {value!r}")
    return value


def positive_field(default: int) -> Reader:
    """An integer greater than 0."""

    def read(table: Table, name: str, where: str, base_dir: Path | None) -> int:
        value = integer(table, name, where, default)
        if value <= 0:
            raise ConfigError(f"{where} {name} must be greater than 0, not {value}")
        return value

    return read


def non_negative_field(default: int) -> Reader:
    """An integer of 0 or more."""

    def read(table: Table, name: str, where: str, base_dir: Path | None) -> int:
        value = integer(table, name, where, default)
        if value < 0:
            raise ConfigError(f"{where} {name} must be 0 or more, not {value}")
        return value

    return read


def boolean_field(default: bool) -> Reader:
    def read(table: Table, name: str, where: str, base_dir: Path | None) -> bool:
        value = table.get(name, default)
        if type(value) is not bool:
            raise ConfigError(f"{where} {name} must be true or false, not {value!r}")
        return value

    return read


def choice_field(default: str, choices: tuple[str, ...]) -> Reader:
    """One of `choices`."""

    def read(table: Table, name: str, where: str, base_dir: Path | None) -> str:
        value = table.get(name, default)
        if value not in choices:
            allowed = " or ".join(f'"{choice}"' for choice in choices)
            raise ConfigError(f"{where} {name} must be {allowed}, not {value!r}")
        return str(value)

    return read
