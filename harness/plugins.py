"""A user's plug-in reference, `package.module:function` (a workload, an MoE implementation, a Hugging
Face experts implementation), checked when the suite loads without importing (running) the module."""
from __future__ import annotations

import ast
import importlib.util
import sys
from importlib.machinery import ModuleSpec
from pathlib import Path
from typing import Optional


def find_module(name: str) -> Optional[ModuleSpec]:
    """Where `name` would be imported from, without importing (running) it or its parent packages.

    `importlib.util.find_spec("pkg.mod")` imports `pkg` to read its `__path__`; here the parent's
    spec gives the search locations instead, and each finder is asked as the import system would.
    """
    if name in sys.modules:
        return getattr(sys.modules[name], "__spec__", None)
    parent, _, _ = name.rpartition(".")
    if not parent:
        return importlib.util.find_spec(name)
    parent_spec = find_module(parent)
    if parent_spec is None or parent_spec.submodule_search_locations is None:
        return None
    locations = list(parent_spec.submodule_search_locations)
    for finder in sys.meta_path:
        find_spec = getattr(finder, "find_spec", None)
        spec = find_spec(name, locations) if find_spec else None
        if spec is not None:
            return spec
    return None


def _defines(spec: ModuleSpec, attr: str) -> Optional[bool]:
    """Whether the module's source defines `attr` at top level (read, not run); None when it cannot
    tell (no Python source, a star import or a module `__getattr__`)."""
    origin = spec.origin
    if not origin or not origin.endswith(".py"):
        return None
    try:
        tree = ast.parse(Path(origin).read_bytes(), filename=origin)
    except OSError:
        return None
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                if alias.name == "*":
                    return None
                names.add(alias.asname or alias.name.split(".")[0])
        else:
            for child in ast.walk(node):
                if isinstance(child, ast.Name) and isinstance(child.ctx, ast.Store):
                    names.add(child.id)
    return None if "__getattr__" in names else attr in names


def plugin_problem(name: str, what: str = "workload") -> Optional[str]:
    """Why `package.module:function` cannot be a workload (or another plug-in, `what`), found without
    importing the module."""
    module, _, function = name.partition(":")
    if not all(part.isidentifier() for part in module.split(".")) or not function.isidentifier():
        return f"{what} {name!r}: expected 'package.module:function' (dotted Python names)"
    try:
        spec = find_module(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        return f"{what} {name!r}: no module {module!r} on the Python path"
    try:
        defined = _defines(spec, function)
    except SyntaxError as exc:
        return f"{what} {name!r}: {spec.origin} line {exc.lineno}: syntax error ({exc.msg})"
    except (ValueError, RecursionError, MemoryError) as exc:
        return f"{what} {name!r}: cannot read {spec.origin} ({type(exc).__name__})"
    if defined is False:
        return f"{what} {name!r}: module {module!r} defines no {function!r}"
    return None
