"""Typed configuration: YAML files plus dotted command-line overrides, validated once.

A config is a tree of dataclasses. :func:`read_yaml` reads a YAML file, :func:`apply_overrides` applies overrides such as
``train.lr=1e-3`` or ``ladder.budgets_tokens=[1e6,2e6]``, and :func:`build_dataclass` builds the dataclasses, rejecting unknown
keys (with the closest known key as a suggestion) and values of the wrong type. Every later stage takes
the typed object, never a dict.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from overtrain.errors import OvertrainError

ConfigT = TypeVar("ConfigT")


# --------------------------------------------------------------------------------------------------
# Parsing overrides
# --------------------------------------------------------------------------------------------------


class _YamlLoader(yaml.SafeLoader):
    """SafeLoader that reads ``1e6`` and ``2E-3`` as numbers (YAML 1.1 wants a dot in floats)."""


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?(?:[eE][-+]?[0-9]+)$"),
    list("-+0123456789"),
)


def load_yaml_text(text: str) -> Any:
    return yaml.load(text, Loader=_YamlLoader)  # noqa: S506 - a SafeLoader subclass


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``"train.lr=1e-3"`` into (["train", "lr"], 0.001); the value is read as YAML."""
    if "=" not in text:
        raise OvertrainError(
            f"override {text!r} has no '='",
            "write overrides as dotted.key=value, for example train.lr=1e-3",
        )
    dotted_key, raw_value = text.split("=", 1)
    keys = [part for part in dotted_key.strip().split(".") if part]
    if not keys:
        raise OvertrainError(f"override {text!r} has an empty key", "write dotted.key=value")
    return keys, _parse_scalar(raw_value)


def _parse_scalar(raw_value: str) -> Any:
    """The value as YAML (numbers, lists, mappings), or the raw text where it is not valid YAML."""
    try:
        return load_yaml_text(raw_value)
    except yaml.YAMLError:
        return raw_value


def apply_overrides(tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of a nested dict with each ``dotted.key=value`` override set."""
    result = _deep_copy(tree)
    for text in overrides:
        keys, value = parse_override(text)
        node = result
        for key in keys[:-1]:
            child = node.get(key)
            if not isinstance(child, dict):
                child = {}
                node[key] = child
            node = child
        node[keys[-1]] = value
    return result


def _deep_copy(tree: dict[str, Any]) -> dict[str, Any]:
    return {key: _deep_copy(value) if isinstance(value, dict) else value for key, value in tree.items()}


# --------------------------------------------------------------------------------------------------
# Building dataclasses from dicts, with validation
# --------------------------------------------------------------------------------------------------


def build_dataclass(cls: type[ConfigT], data: dict[str, Any] | None, where: str = "") -> ConfigT:
    """Build dataclass ``cls`` from a nested dict, checking keys and types; ``where`` names the path."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    fields = {field.name: field for field in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key in data:
        if key not in fields:
            _raise_unknown_key(where, key, list(fields))
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(value, hints[name], f"{where}{name}")
    try:
        return cls(**kwargs)
    except TypeError as error:  # a required field is missing
        raise OvertrainError(f"config section {where or '(top)'!r}: {error}", "add the missing key") from None


def _raise_unknown_key(where: str, key: str, known: list[str]) -> None:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"did you mean {where}{close[0]}?" if close else "remove it"
    raise OvertrainError(
        f"unknown config key {where}{key!r}",
        f"{hint} Known keys here: {', '.join(sorted(known))}",
    )


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check (and gently convert) ``value`` against a type annotation; raise with the key's path."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (arg for arg in args if arg is not type(None)):
            try:
                return _coerce(value, option, where)
            except OvertrainError as error:
                errors.append(error)
        raise errors[0]
    if origin is typing.Literal:
        if value not in args:
            raise OvertrainError(
                f"config key {where} = {value!r} is not allowed", f"use one of {', '.join(map(repr, args))}"
            )
        return value
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise OvertrainError(f"config key {where} must be a section (a mapping)", f"write {where}.KEY=VALUE")
        return build_dataclass(annotation, value, where + ".")
    if origin in (list, tuple):
        return _coerce_sequence(value, origin, args, where)
    if origin is dict:
        if not isinstance(value, dict):
            raise OvertrainError(f"config key {where} must be a mapping", "write it as {key: value}")
        return {str(key): _coerce(item, args[1], f"{where}.{key}") for key, item in value.items()}
    return _coerce_leaf(value, annotation, where)


def _coerce_sequence(value: Any, origin: Any, args: tuple[Any, ...], where: str) -> Any:
    if not isinstance(value, (list, tuple)):
        value = [value]
    item_type = args[0] if args else Any
    items = [_coerce(item, item_type, f"{where}[{index}]") for index, item in enumerate(value)]
    return tuple(items) if origin is tuple else items


def _coerce_leaf(value: Any, annotation: Any, where: str) -> Any:
    if annotation is Any:
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise OvertrainError(f"config key {where} must be true or false, got {value!r}", f"set {where}=true or false")
    if annotation is int:
        # 1e6 is a float in YAML; accept it when it is integral so budgets read naturally.
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise OvertrainError(f"config key {where} must be a whole number, got {value!r}", f"set {where}=<integer>")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise OvertrainError(f"config key {where} must be a number, got {value!r}", f"set {where}=<number>")
    if annotation is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise OvertrainError(f"config key {where} must be text, got {value!r}", f"set {where}=<text>")
    return value


# --------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing file or a non-mapping is a clear error."""
    path = Path(path)
    if not path.is_file():
        raise OvertrainError(f"config file {path} does not exist", "pass the path of a YAML file, e.g. configs/demo/tiny.yaml")
    try:
        data = load_yaml_text(path.read_text())
    except yaml.YAMLError as error:
        raise OvertrainError(f"config file {path} is not valid YAML: {error}", "fix the YAML syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise OvertrainError(f"config file {path} must hold a mapping of keys, not {type(data).__name__}", "see configs/demo/")
    return data




def config_to_dict(config: Any) -> dict[str, Any]:
    """Plain nested dict of a config dataclass (for JSON, YAML and hashing)."""
    return dataclasses.asdict(config)


def dump_yaml(config: Any) -> str:
    return yaml.safe_dump(config_to_dict(config), sort_keys=False, default_flow_style=None)
