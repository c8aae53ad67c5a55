"""Facts the docs state about counting and memory, checked, and docs that stand alone."""
from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_docs_point_at_nothing_outside_the_repository():
    for path in DOCS:
        text = path.read_text()
        for outside in ("shared/reference", "papers-and-accuracy", "moe-anchors", "harness-anchors"):
            assert outside not in text, f"{path.name} refers to {outside}, which is not in this repository"


def test_flop_counter_counts_sdpa_backward_as_two_and_a_half_forwards():
    """docs/accounting.md: our training FLOPs are 3x forward; FlopCounterMode gives attention 3.5x."""
    q = torch.randn(1, 2, 16, 8, requires_grad=True)
    with FlopCounterMode(display=False) as forward:
        out = torch.nn.functional.scaled_dot_product_attention(q, q, q)
    with FlopCounterMode(display=False) as backward:
        out.sum().backward()
    assert backward.get_total_flops() == 2.5 * forward.get_total_flops()
    text = (ROOT / "docs" / "accounting.md").read_text()
    assert "2.5x its forward" in text


def test_accounting_docs_no_longer_call_the_memory_estimate_a_lower_bound_or_give_forward_a_kv_cache():
    text = (ROOT / "docs" / "accounting.md").read_text()
    assert "lower bound" not in text
    assert "**Inference** (`forward`) counts the weights plus a KV cache" not in text
