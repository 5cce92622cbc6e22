"""Typed configuration: YAML files plus dotted command-line overrides, validated once.

A config is a tree of dataclasses. :func:`read_yaml` reads a YAML file, :func:`apply_overrides` applies overrides such as
``train.lr=1e-3`` or ``ladder.budgets_tokens=[1e6,2e6]``, and :func:`build_dataclass` builds the dataclasses, rejecting unknown
keys (with the closest known key as a suggestion) and values of the wrong type. Every later stage takes
the typed object, never a dict.
"""

from __future__ import annotations

import copy
import dataclasses
import decimal
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


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A mapping names the same key twice (YAML would silently keep only the last one)."""


def _construct_unique_mapping(loader: _YamlLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    """Like SafeLoader's mapping constructor, but a repeated key is an error that names both lines."""
    loader.flatten_mapping(node)
    first_line: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        line = key_node.start_mark.line + 1
        if isinstance(key, typing.Hashable) and key in first_line:
            raise DuplicateKeyError(
                None, None, f"key {key!r} appears twice (lines {first_line[key]} and {line}); merge the two into one", key_node.start_mark
            )
        if isinstance(key, typing.Hashable):
            first_line[key] = line
    return loader.construct_mapping(node, deep=deep)


_YamlLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)

MAX_NESTING = 32
"""Deepest nesting of sections and lists a config may have (real configs use 3)."""


def load_yaml_text(text: str) -> Any:
    """Parse YAML with the loader above: ``1e6`` is a number and a repeated key is an error."""
    return yaml.load(text, Loader=_YamlLoader)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``"train.lr=1e-3"`` into (["train", "lr"], 0.001); the value is read as YAML."""
    if "=" not in text:
        looks_like_a_config = text.endswith((".yaml", ".yml")) or Path(text).is_file()
        raise OvertrainError(
            f"override {text!r} has no '='",
            "the config file goes first, before the overrides: overtrain VERB CONFIG.yaml key=value ..."
            if looks_like_a_config else "write overrides as dotted.key=value, for example train.lr=1e-3",
        )
    dotted_key, raw_value = text.split("=", 1)
    keys = dotted_key.strip().split(".")
    if not dotted_key.strip():
        raise OvertrainError(f"override {text!r} has an empty key", "write dotted.key=value")
    if not all(keys):  # train..lr, .train.lr, train.lr.: a typo, not silently the key it resembles
        shown = ".".join(part for part in keys if part)
        raise OvertrainError(f"override {text!r} has an empty part in its key {dotted_key.strip()!r}",
                             f"join the parts with single dots, e.g. {shown}={raw_value}")
    return keys, _parse_scalar(raw_value)


def _parse_scalar(raw_value: str) -> Any:
    """The value as YAML (numbers, lists, mappings), or the raw text where it is not valid YAML."""
    try:
        return load_yaml_text(raw_value)
    except DuplicateKeyError as error:
        raise OvertrainError(f"override value {raw_value!r}: {error.problem}", "name each key once") from None
    except (yaml.YAMLError, RecursionError) as error:
        if raw_value.strip().startswith(("[", "{")):  # meant as a list or mapping: never kept as one string
            detail = getattr(error, "problem", None) or type(error).__name__
            raise OvertrainError(
                f"override value {raw_value!r} opens a list or mapping but is not valid YAML ({detail})",
                "write it as YAML: close every bracket, and quote the items that start with a YAML symbol (* & ! | > % @ `), "
                "and the whole override for the shell, so that it keeps those quotes: e.g. 'groups=[\"*mlp*\",all]'",
            ) from None
        return raw_value


def apply_overrides(tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of a nested dict with each ``dotted.key=value`` override set.

    A key given twice is refused, as a repeated YAML key is: otherwise the last one would silently win.
    """
    result = _deep_copy(tree)
    given: dict[tuple[str, ...], str] = {}
    for text in overrides:
        keys, value = parse_override(text)
        if tuple(keys) in given:
            dotted = ".".join(keys)
            raise OvertrainError(
                f"setting {dotted} is given twice on the command line ({given[tuple(keys)]!r} and {text!r})",
                f"give {dotted} once, with the value you mean",
            )
        given[tuple(keys)] = text
        node = result
        for key in keys[:-1]:
            child = node.get(key)
            if not isinstance(child, dict):  # a value there is replaced, and _coerce names the key below a value
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
    """Refuse ``where + key`` (e.g. ``model.bogus``), suggesting the closest known key, else removing it."""
    close = difflib.get_close_matches(str(key), known, n=1)
    name = f"{where}{key}" if isinstance(key, str) and key.isidentifier() else f"{where}{key!r}"  # quoted when odd ('', 'a b', 1)
    hint = f"did you mean {where}{close[0]}?" if close else f"remove {name}."
    raise OvertrainError(
        f"unknown config key {name}",
        f"{hint} Known keys here: {', '.join(sorted(known))}.",
    )


def _takes_a_mapping(annotation: Any) -> bool:
    """Whether a mapping may stand for ``annotation``: a section (a dataclass), a dict, Any, or a union with one."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(map(_takes_a_mapping, typing.get_args(annotation)))
    return annotation is Any or origin is dict or annotation is dict or dataclasses.is_dataclass(annotation)


def _is_bare_prefix(value: dict[Any, Any]) -> bool:
    """YAML reads ``task=file:`` (a prefix with nothing after the colon) as ``{file: None}``: the text keys say so."""
    return len(value) == 1 and next(iter(value.values())) is None


def _leaf_choices(annotation: Any) -> list[str]:
    """What a plain value of ``annotation`` may be, in words, one per choice ([] for sections, lists and the like)."""
    if typing.get_origin(annotation) is typing.Literal:
        return [repr(choice) for choice in typing.get_args(annotation)]
    return {bool: ["true", "false"], int: ["a whole number"], float: ["a number"], str: ["text"]}.get(annotation, [])


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check (and gently convert) ``value`` against a type annotation; raise with the key's path."""
    if isinstance(value, dict) and not _takes_a_mapping(annotation) and not _is_bare_prefix(value):
        first = next(iter(value), "KEY")
        raise OvertrainError(f"config key {where} holds a value, not a section of keys, so {where}.{first} names nothing",
                             f"set {where} itself (e.g. {where}=VALUE) instead of a key below it")
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        options = [arg for arg in args if arg is not type(None)]
        for option in options:
            try:
                return _coerce(value, option, where)
            except OvertrainError as error:
                errors.append(error)
        described = [_leaf_choices(option) for option in options]
        if all(described):  # name every choice (e.g. true, false or 'auto'), not only the first option's
            choices = [choice for option_choices in described for choice in option_choices]
            said = f"{', '.join(choices[:-1])} or {choices[-1]}"
            raise OvertrainError(f"config key {where} must be {said}, got {value!r}", f"set {where} to one of those")
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


FOLDER_KEYS = ("out_dir", "cache_dir")
"""Text keys naming a folder: empty text is refused (an unset shell variable, say), not read as the current folder."""


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
            if int(value) != int(decimal.Decimal(repr(value))):  # 1e30 as a float is 1000000000000000019884624838656
                raise OvertrainError(f"config key {where} = {value:g} is too large to be read exactly from a float",
                                     f"write {where} in digits (a float holds every whole number up to 2^53, about 9e15)")
            return int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise OvertrainError(f"config key {where} must be a whole number, got {value!r}", f"set {where}=<integer>")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise OvertrainError(f"config key {where} must be a number, got {value!r}", f"set {where}=<number>")
    if annotation is str:
        if where.rsplit(".", 1)[-1] in FOLDER_KEYS and isinstance(value, str) and not value.strip():
            raise OvertrainError(f"config key {where} is empty, which would mean the current folder", f"set {where}=<folder>")
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        if isinstance(value, dict) and _is_bare_prefix(value):
            raise OvertrainError(f"config key {where} = '{next(iter(value))}:' names nothing after the colon",
                                 f"write what follows the colon, e.g. {next(iter(value))}:PATH")
        raise OvertrainError(f"config key {where} must be text, got {value!r}", f"set {where}=<text>")
    return value


# --------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; every way a file can be unusable is one clear error (never a traceback).

    Refused: a missing path or a folder, an unreadable or non-UTF-8 (binary) file, invalid YAML, a key
    given twice in one mapping, nesting deeper than :data:`MAX_NESTING`, a top level that is not a
    mapping, and an empty file (which would otherwise silently mean "all defaults").
    """
    path = Path(path)
    if path.is_dir():
        raise OvertrainError(f"config file {path} is a folder", "pass the path of a YAML file, e.g. configs/demo/nano.yaml")
    if not path.is_file():
        raise OvertrainError(f"config file {path} does not exist", "pass the path of a YAML file, e.g. configs/demo/nano.yaml")
    data = _parse_yaml_file(path, _read_config_text(path))
    if data is None:
        raise OvertrainError(
            f"config file {path} is empty (no settings in it)",
            "put settings in it (see configs/demo/), or leave the config argument out to use every default on purpose",
        )
    if not isinstance(data, dict):
        raise OvertrainError(f"config file {path} must hold a mapping of keys, not {type(data).__name__}", "see configs/demo/")
    return data


def _read_config_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise OvertrainError(
            f"config file {path} cannot be read ({error.strerror or error})", "check its permissions (chmod a+r) or pass another file"
        ) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise OvertrainError(
            f"config file {path} is not a text file: byte {error.start} is not UTF-8 (is it a binary file?)",
            "pass a YAML text file, e.g. configs/demo/nano.yaml",
        ) from None
    if "\x00" in text:
        raise OvertrainError(f"config file {path} is not a text file: it holds NUL bytes", "pass a YAML text file, e.g. configs/demo/nano.yaml")
    return text


def _parse_yaml_file(path: Path, text: str) -> Any:
    try:
        data = load_yaml_text(text)
    except DuplicateKeyError as error:
        raise OvertrainError(f"config file {path}, line {error.problem_mark.line + 1}: {error.problem}", "name each key once") from None
    except yaml.YAMLError as error:
        raise OvertrainError(f"config file {path} is not valid YAML: {error}", "fix the YAML syntax") from None
    except RecursionError:
        data = None
        depth = MAX_NESTING + 1
    else:
        depth = nesting_depth(data)
    if depth > MAX_NESTING:
        raise OvertrainError(
            f"config file {path} nests sections or lists more than {MAX_NESTING} deep",
            "configs have a few levels (section.key: value); check the file for runaway brackets or indentation",
        )
    return data


def nesting_depth(value: Any) -> int:
    """How deeply mappings and lists nest in ``value`` (a scalar is 0), computed without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        stack.extend((child, depth + 1) for child in children)
        if deepest > MAX_NESTING:
            break
    return deepest


TRANSIENT = {"transient": True}
"""``field(metadata=TRANSIENT)`` marks an instruction for one invocation (e.g. ``train.extend``), not a
setting: :func:`config_to_dict` leaves it out, so it is never saved, hashed or replayed."""


OMITTED_AT_DEFAULT = {"omitted_at_default": True}
"""``field(metadata=OMITTED_AT_DEFAULT)`` marks a setting added after runs were stored: left at its default it
is left out of :func:`config_to_dict`, so the job keys, run bindings and cache keys of configs that do not
use it stay what they were (e.g. ``data.long_tail``, off by default)."""


def config_to_dict(config: Any) -> dict[str, Any]:
    """Plain nested dict of a config dataclass (for JSON, YAML and hashing); transient fields, and fields
    marked :data:`OMITTED_AT_DEFAULT` that hold their default, left out."""
    return {item.name: _plain(getattr(config, item.name)) for item in dataclasses.fields(config)
            if not item.metadata.get("transient") and not _omitted_default(config, item)}


def _omitted_default(config: Any, item: dataclasses.Field) -> bool:
    if not item.metadata.get("omitted_at_default"):
        return False
    default = item.default_factory() if item.default_factory is not dataclasses.MISSING else item.default
    return _plain(getattr(config, item.name)) == _plain(default)


def _plain(value: Any) -> Any:
    """``value`` with every dataclass in it turned into a dict (as ``dataclasses.asdict`` does), copied."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return config_to_dict(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(item) for item in value)
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return copy.deepcopy(value)


def dump_yaml(config: Any) -> str:
    return yaml.safe_dump(config_to_dict(config), sort_keys=False, default_flow_style=None)
