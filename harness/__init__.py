"""moe-harness: measure Mixture-of-Experts models against matched dense baselines."""

__version__ = "0.1.0"
