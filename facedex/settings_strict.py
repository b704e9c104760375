"""Refuse settings that name nothing: a misspelt key would otherwise be silently ignored and its default used.

Checked before the settings are built: every ``FACEDEX_*`` environment variable (nested with ``__``) and
every key and section of the TOML file must name a field of :class:`facedex.config.Settings`; the error
names the key and suggests the closest valid one.
"""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel

ENV_PREFIX = "FACEDEX_"
# FACEDEX_* variables that are not settings: the config file's path, and the test suite's own knobs
NOT_SETTINGS = ("FACEDEX_CONFIG",)
NOT_SETTINGS_PREFIXES = ("FACEDEX_TEST_",)


class UnknownSettingError(ValueError):
    """A setting name that matches no field (the message names it and the closest valid one)."""


def _model(annotation: Any) -> type[BaseModel] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _suggest(name: str, candidates: Iterable[str], render: Any) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.5)
    return f"; did you mean {render(close[0])}?" if close else ""


def _check_path(model: type[BaseModel], parts: list[str], render: Any, where: str) -> None:
    """Walk ``parts`` down nested models; raise at the first part that names no field."""
    for depth, part in enumerate(parts):
        fields = model.model_fields
        if part not in fields:
            valid = [*parts[:depth], None]
            hint = _suggest(part, fields, lambda c: render([*valid[:-1], c]))
            raise UnknownSettingError(f"unknown setting {render(parts[: depth + 1])} in {where}{hint}")
        inner = _model(fields[part].annotation)
        if inner is None:
            if depth + 1 < len(parts):  # FACEDEX_LOG_LEVEL__X: a plain value has no sub-settings
                raise UnknownSettingError(f"unknown setting {render(parts)} in {where}: {render(parts[: depth + 1])} has no sub-settings")
            return
        model = inner


def check_environment(model: type[BaseModel], environ: Mapping[str, str]) -> None:
    def render(parts: list[str]) -> str:
        return ENV_PREFIX + "__".join(parts).upper()

    for name in sorted(environ):
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper in NOT_SETTINGS or upper.startswith(NOT_SETTINGS_PREFIXES):
            continue
        _check_path(model, upper[len(ENV_PREFIX):].lower().split("__"), render, "the environment")


def _toml_paths(data: Mapping[str, Any], model: type[BaseModel], prefix: list[str]) -> Iterable[list[str]]:
    for key, value in data.items():
        path = [*prefix, key]
        yield path
        field = model.model_fields.get(key)
        inner = _model(field.annotation) if field is not None else None
        if inner is not None and isinstance(value, Mapping):
            yield from _toml_paths(value, inner, path)


def check_toml(model: type[BaseModel], path: Path) -> None:
    with path.open("rb") as f:
        data = tomllib.load(f)

    def render(parts: list[str]) -> str:
        return ".".join(parts)

    for parts in _toml_paths(data, model, []):
        _check_path(model, parts, render, str(path))
