import textwrap
from pathlib import Path

import pytest

TINY_SUITE = """
name: tiny
model: {vocab_size: 64, d_model: 32, n_layers: 2, n_heads: 2, d_ff: 64, seq_len: 16}
moe: {num_experts: 4, top_k: 1, capacity_factor: 1.0, impl: loop}
run: {batch_size: 2, warmup: 1, repeats: 2, timeout_s: 120, device: cpu}
workloads: [train_step, forward]
sweep:
  grid:
    moe.top_k: [1, 2]
"""


@pytest.fixture
def write_suite(tmp_path: Path):
    """Write a suite YAML (dedented) into tmp_path and return its path."""

    def write(text: str, name: str = "suite.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path

    return write


@pytest.fixture
def one_thread():
    """Tiny models: extra intra-op threads only add synchronisation, which on a busy 2-core machine
    costs orders of magnitude more than the work. Restores torch's thread count afterwards."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
