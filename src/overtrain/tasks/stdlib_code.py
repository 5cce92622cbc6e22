"""``python-code``: write the body of a Python function from its signature and docstring.

Source: the CPython standard library of the running interpreter (``sysconfig.get_paths()["stdlib"]``),
or any folder of ``.py`` files given as ``data_path``. Test code is excluded (folders ``test``,
``tests``, ``idle_test``, ``site-packages``; files ``test_*.py``, ``conftest.py``).

Format: every function or method with a docstring and at least one statement after it, dedented.
Prompt = decorators + ``def`` line + docstring (ending in a newline); completion = the rest of the body.
Tiny models can learn this: the docstring says what the body does, and stdlib code is idiomatic and
consistent. Bodies that are only ``pass`` or ``...`` are skipped.
Split: a whole module is held out when the sha256 of its path (relative to the root, e.g.
``json/decoder.py``) falls in the lowest 10%, so a function never lands in both splits; held-out
modules are read in path order. Sizes depend on the Python version (the description names it).
When ``max_train`` / ``max_heldout`` are given, modules are parsed only until that many examples are
found (train modules in a seeded order), which keeps small loads fast.
"""

from __future__ import annotations

import ast
import functools
import os
import random
import sys
import sysconfig
import tokenize
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

from overtrain.tasks.records import (
    LoadOptions,
    TaskExample,
    TaskSplits,
    fits,
    is_heldout_key,
    make_splits,
    require_existing_path,
)

NAME = "python-code"
HELDOUT_FRACTION = 0.1
EXCLUDED_FOLDERS = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"})
_FUNCTION_NODES = (ast.FunctionDef, ast.AsyncFunctionDef)


def is_library_module(relative: Path) -> bool:
    """Whether a ``.py`` path (relative to the root) is library code, not tests."""
    name = relative.name
    if name.startswith("test_") or name in ("conftest.py", "test.py"):
        return False
    return not EXCLUDED_FOLDERS.intersection(relative.parts[:-1])


def list_modules(root: Path) -> list[Path]:
    """Library modules under ``root``, relative to it, in path order (excluded folders are not walked)."""
    modules = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = [name for name in subfolders if name not in EXCLUDED_FOLDERS]
        relative_folder = Path(folder).relative_to(root)
        modules.extend(relative_folder / name for name in files if name.endswith(".py"))
    return sorted((path for path in modules if is_library_module(path)), key=lambda path: path.as_posix())


def _dedent(lines: Iterable[str], indent: int) -> list[str]:
    return [line[indent:] if line[:indent].strip() == "" else line.lstrip() for line in lines]


def _is_trivial(statement: ast.stmt) -> bool:
    """Whether a statement is a bare ``pass`` or ``...``."""
    if isinstance(statement, ast.Pass):
        return True
    return isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant) and statement.value.value is ...


def _function_example(node: ast.FunctionDef | ast.AsyncFunctionDef, lines: list[str]) -> TaskExample | None:
    body = node.body
    if len(body) < 2 or ast.get_docstring(node, clean=False) is None:
        return None
    if len(body) == 2 and _is_trivial(body[1]):
        return None
    docstring_end = body[0].end_lineno
    if body[1].lineno == docstring_end or docstring_end is None or node.end_lineno is None:
        return None
    start = min([node.lineno] + [decorator.lineno for decorator in node.decorator_list]) - 1
    prompt_lines = _dedent(lines[start:docstring_end], node.col_offset)
    completion_lines = _dedent(lines[docstring_end : node.end_lineno], node.col_offset)
    return TaskExample(prompt="\n".join(prompt_lines) + "\n", completion="\n".join(completion_lines) + "\n")


def functions_in_source(source: str) -> list[TaskExample]:
    """Examples for every documented function in one module's source (none if it does not parse)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    lines = source.splitlines()
    examples = (_function_example(node, lines) for node in ast.walk(tree) if isinstance(node, _FUNCTION_NODES))
    return [example for example in examples if example is not None]


def _read_module(path: Path) -> str:
    try:
        with tokenize.open(path) as handle:
            return handle.read()
    except (OSError, SyntaxError, UnicodeDecodeError):
        return ""


@functools.lru_cache(maxsize=4096)
def _module_examples(path: Path, modified_ns: int) -> tuple[TaskExample, ...]:
    """One module's examples, cached while the file is unchanged (repeated loads skip parsing)."""
    return tuple(functions_in_source(_read_module(path)))


def _examples(root: Path, modules: Iterable[Path], max_chars: int) -> Iterator[TaskExample]:
    for module in modules:
        path = root / module
        for example in _module_examples(path, path.stat().st_mtime_ns):
            if fits(example, max_chars):
                yield example


def _collect(root: Path, modules: Iterable[Path], max_chars: int, limit: int | None) -> list[TaskExample]:
    examples = []
    for example in _examples(root, modules, max_chars):
        if limit is not None and len(examples) >= limit:
            break
        examples.append(example)
    return examples


def _root_and_label(options: LoadOptions) -> tuple[Path, str]:
    if options.data_path is None:
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        return Path(sysconfig.get_paths()["stdlib"]), f"CPython {version} standard library"
    root = require_existing_path(options.data_path, NAME, "a folder of .py files")
    return root, f"Python files under {root}"


def load(options: LoadOptions) -> TaskSplits:
    """The ``python-code`` task."""
    root, label = _root_and_label(options)
    modules = list_modules(root)
    heldout_modules = [module for module in modules if is_heldout_key(module.as_posix(), HELDOUT_FRACTION)]
    train_modules = [module for module in modules if not is_heldout_key(module.as_posix(), HELDOUT_FRACTION)]
    random.Random(options.seed).shuffle(train_modules)
    heldout = _collect(root, heldout_modules, options.max_chars, options.max_heldout)
    # A margin over max_train: train examples that duplicate a held-out prompt are dropped later.
    train_limit = None if options.max_train is None else options.max_train + len(heldout)
    train = _collect(root, train_modules, options.max_chars, train_limit)
    description = f"{label}: signature + docstring -> body; held out: whole modules by sha256 of their path (10%)"
    return make_splits(NAME, description, str(root), train, heldout, options)
