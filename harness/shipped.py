"""The suites shipped inside the package (`harness/suites/`), so a wheel install runs them by name.

In a checkout `harness/suites` links to the top-level `suites/` folder, the one home of the files;
the wheel carries them as package data.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path


def suites_dir() -> Path:
    return Path(str(resources.files("harness") / "suites"))


def names() -> list[str]:
    return sorted(p.stem for p in suites_dir().glob("*.yaml"))


def suite(name: str) -> Path:
    """The shipped suite `name` (e.g. `smoke`, `gpu-smoke`)."""
    path = suites_dir() / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"no shipped suite {name!r}; shipped: {', '.join(names())}")
    return path


def resolve(given: str) -> str:
    """A suite argument as a path: an existing file as given, else a shipped suite's name
    (`gpu-smoke` or `gpu-smoke.yaml`), else unchanged so the loader reports the missing file."""
    if Path(given).exists() or "/" in given or "\\" in given:
        return given
    name = given[: -len(".yaml")] if given.endswith(".yaml") else given
    return str(suites_dir() / f"{name}.yaml") if name in names() else given
