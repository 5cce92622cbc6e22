"""``--help`` text generated from the settings dataclasses: each key, its default and its docstring.

The docstring of a field is the string literal right after it in the class body (read with ``ast``);
a sweep section's list-valued field (``lrs``) is documented by the field it sweeps (``lr``).
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import textwrap
import typing
from functools import cache
from typing import Any

AXIS_METADATA = "axis_of"
WIDTH = 100


@cache
def attribute_docs(cls: type) -> dict[str, str]:
    """Field name -> its attribute docstring, for ``cls`` and its bases (a subclass's own docs win)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, following in zip(body, body[1:]):
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and _is_string(following):
                docs[node.target.id] = inspect.cleandoc(following.value.value)
    return docs


def _is_string(node: ast.stmt) -> bool:
    return isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)


def field_doc(cls: type, item: dataclasses.Field) -> str:
    """The docstring of one field; for a sweep axis, the swept setting's docstring and how to list values."""
    axis = item.metadata.get(AXIS_METADATA)
    base = getattr(cls, "settings_class", None)
    if axis is None:
        return attribute_docs(cls).get(item.name) or (attribute_docs(base).get(item.name, "") if base else "")
    swept = attribute_docs(base).get(axis, "") if base else ""
    how = "N seeds (0..N-1) or a list of seeds" if item.name == "seeds" else "a list of values"
    return f"{swept} Swept: {how}, one job per value; {axis}=X is {item.name}=[X]."


def _default_text(item: dataclasses.Field) -> str:
    if item.default is not dataclasses.MISSING:
        value = item.default
    elif item.default_factory is not dataclasses.MISSING:
        value = item.default_factory()
    else:
        return "required"
    if dataclasses.is_dataclass(value):
        return "section"
    return json.dumps(value, separators=(",", ":")).strip('"') if value is not None else "null"


def keys_help(cls: type, prefix: str = "", expand: tuple[str, ...] = ()) -> str:
    """One entry per key: ``prefix.key=DEFAULT`` then its docstring, indented; the sections named in
    ``expand`` (or every dataclass-typed field when ``expand`` is empty) listed key by key after."""
    lines, sections = [], []
    hints = typing.get_type_hints(cls)
    for item in _own_fields_first(cls):  # transient fields too (train.extend): an instruction is still a key
        section_type = _section_type(hints[item.name])
        if section_type is not None and (not expand or item.name in expand):
            sections.append((item, section_type))
            continue
        lines.append(f"  {prefix}{item.name}={_default_text(item)}")
        doc = field_doc(cls, item)
        if doc:
            lines += textwrap.wrap(" ".join(doc.split()), WIDTH, initial_indent="      ", subsequent_indent="      ")
    for item, section_type in sections:
        doc = " ".join(field_doc(cls, item).split())
        lines.append(f"\n{prefix}{item.name}.*  {doc}".rstrip())
        lines.append(keys_help(section_type, f"{prefix}{item.name}."))
    return "\n".join(lines)


def _own_fields_first(cls: type) -> list[dataclasses.Field]:
    """The fields of ``cls``, those it inherits from a dataclass base after its own."""
    inherited = {item.name for base in cls.__mro__[1:] if dataclasses.is_dataclass(base) for item in dataclasses.fields(base)}
    fields = dataclasses.fields(cls)
    return [item for item in fields if item.name not in inherited] + [item for item in fields if item.name in inherited]


def _section_type(annotation: Any) -> type | None:
    """The dataclass of a section-typed field (``X`` or ``X | None``), else None."""
    options = typing.get_args(annotation) or (annotation,)
    found = [option for option in options if dataclasses.is_dataclass(option)]
    return found[0] if found else None
