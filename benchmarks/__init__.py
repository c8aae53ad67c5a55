"""Benchmark commands (not tests): speed targets are checked here, with ratios measured in one run."""
