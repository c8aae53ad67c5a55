"""Published model architectures, one YAML file each, usable as `model: {preset: NAME}` and in `plan NAME`.

A preset file holds `model` (and `moe` for MoE models) in the suite schema, plus metadata that is not part
of a case: `description`, `dense_peer` (the name of a dense preset), and `published` parameter counts with
their source (and, when the vendor counts active parameters without the input embedding,
`active_convention: non_embedding`), which the tests hold the accounting to.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any, Optional

import yaml


@dataclass(frozen=True)
class Published:
    total: float
    active: float
    source: str
    active_convention: str = "all"  # "non_embedding": the vendor leaves the input embedding out (DeepSeek)


@dataclass(frozen=True)
class PresetInfo:
    name: str
    description: str
    dense_peer: Optional[str]
    published: Optional[Published]


@lru_cache(maxsize=None)
def _load_all() -> dict[str, dict[str, Any]]:
    found = {}
    for entry in resources.files(__name__).iterdir():
        if entry.name.endswith(".yaml"):
            found[entry.name[: -len(".yaml")]] = yaml.safe_load(entry.read_text())
    return found


def names() -> list[str]:
    return sorted(_load_all())


def _raw(name: str) -> dict[str, Any]:
    presets = _load_all()
    if name not in presets:
        raise KeyError(f"unknown preset {name!r}; known: {', '.join(names())}")
    return presets[name]


def resolve(name: str) -> dict[str, Any]:
    """The preset's config blocks: {"model": {...}, "moe": {...}}; "moe" is absent for a dense model."""
    raw = _raw(name)
    out = {"model": dict(raw["model"])}
    if raw.get("moe") is not None:
        out["moe"] = dict(raw["moe"])
    return out


def info(name: str) -> PresetInfo:
    raw = _raw(name)
    published = raw.get("published")
    return PresetInfo(
        name=name,
        description=raw.get("description", ""),
        dense_peer=raw.get("dense_peer"),
        published=Published(float(published["total"]), float(published["active"]), published["source"],
                            published.get("active_convention", "all"))
        if published else None,
    )
