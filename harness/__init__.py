"""moe-harness: measure Mixture-of-Experts models against matched dense baselines."""

__version__ = "0.1.0"


def __getattr__(name: str):
    """`harness.load` / `harness.paired` without importing pandas on `import harness`."""
    if name in ("load", "paired"):
        from harness import analysis

        return getattr(analysis, name)
    raise AttributeError(f"module 'harness' has no attribute {name!r}")
