"""The hf model source: Hugging Face transformers models built from tiny random configs, no network."""
from __future__ import annotations

import subprocess
import sys
import typing

import pytest
import torch

pytest.importorskip("transformers", reason="the hf source needs transformers (extra [hf])")

from harness import accounting  # noqa: E402
from harness.cli import main  # noqa: E402
from harness.config import Case, HFFamily, ModelConfig, MoEConfig, RunSettings  # noqa: E402
from harness.metrics import routing  # noqa: E402
from harness.models import impl_check  # noqa: E402
from harness.models.hf import families  # noqa: E402
from harness.models.hf.build import experts_implementations  # noqa: E402
from harness.models.moe.dispatch import loop  # noqa: E402
from harness.models.transformer import build_model  # noqa: E402
from harness.suite import SuiteError, load_suite  # noqa: E402
from harness.sweep import expand  # noqa: E402

MOE_FAMILIES = ["mixtral", "qwen2_moe", "qwen3_moe", "olmoe"]


def tiny_case(family: str, source: str = "hf", impl: str = "loop", hf_impl: str | None = "eager", **moe_keys) -> Case:
    """A two-layer model of `family`'s architecture (shared expert and a dense first layer where it has them)."""
    model_keys, moe_defaults = families.defaults(family)
    is_moe = families.FAMILIES[family].is_moe
    model = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=4 if family == "olmoe" else 2,
                        d_ff=40, seq_len=16, source=source, config=family if source == "hf" else None, **model_keys)
    moe = None
    if is_moe:
        extra = {"d_shared": 32} if family == "qwen2_moe" else {}
        if family == "qwen3_moe":
            extra["first_dense"] = 1
        moe = MoEConfig(num_experts=4, top_k=2, d_expert=24, impl=impl, **{**moe_defaults, **extra, **moe_keys})
    run = RunSettings(device="cpu", hf_experts_implementation=hf_impl if source == "hf" and is_moe else None)
    return Case(kind="moe" if is_moe else "dense", model=model, moe=moe, run=run)


def pair(family: str, **keys) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The harness's model and the Hugging Face one of one case, built from the same seed."""
    models = []
    for source in ("native", "hf"):
        torch.manual_seed(0)
        models.append(build_model(tiny_case(family, source, **keys)).eval())
    return models[0], models[1]


def test_family_table_matches_the_config_schema():
    assert set(families.FAMILIES) == set(typing.get_args(HFFamily))
    for family in families.MOE_FAMILIES:
        assert not families.FAMILIES[families.FAMILIES[family].dense_peer].is_moe


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_harness_moe_layer_equals_the_hf_block(family, one_thread, record_property):
    """Same weights (copied by the hf source), same input: the harness's loop layer and transformers'
    eager block agree exactly in fp32. (Widths are multiples of 16, as in published models: for odd
    ones the harness's fused gate/up GEMM of the shared expert and transformers' two GEMMs can round
    differently, by ~1e-10.)"""
    native, hf = pair(family)
    torch.manual_seed(1)
    x = torch.randn(3, 16, 32)
    layer = native.config.n_layers - 1  # qwen3_moe's first layer is dense
    with torch.no_grad():
        ours, _ = native.blocks[layer].ffn(x)
        theirs = hf.hf.model.layers[layer].mlp(x)
    diff = float((ours - theirs).abs().max())
    record_property("max_abs_diff", diff)
    print(f"{family}: max abs diff harness MoE layer vs transformers block = {diff}")
    assert diff == 0.0


@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe", "mistral", "qwen2", "olmo"])
def test_whole_model_logits_match_when_the_family_has_no_extra_parameters(family, one_thread):
    """Qwen3's and OLMoE's q/k norms have no harness counterpart; everything else is the same model."""
    native, hf = pair(family)
    tokens = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        diff = float((native(tokens)[0] - hf(tokens)[0]).abs().max())
    print(f"{family}: max abs logit diff = {diff}")
    assert diff < 1e-5


@pytest.mark.parametrize("family", list(families.FAMILIES))
def test_counted_flops_equal_the_analytic_count(family):
    """Meta-device FlopCounterMode on the transformers model against the harness's formula (both count
    matmuls only, attention over the full sequence); parameters differ only by what the harness lacks."""
    case = tiny_case(family)
    analytic = accounting.forward_flops(case.model, case.moe).total
    counted = accounting.summary(case.model, case.moe)
    assert counted["flops_per_token"] == pytest.approx(analytic, rel=0.01)
    assert counted["train_flops_per_token"] == pytest.approx(3 * counted["flops_per_token"])
    hf = build_model(case)
    assert counted["params_total"] == sum(p.numel() for p in hf.parameters())
    assert counted["params_total"] == pytest.approx(accounting.param_counts(case.model, case.moe).total, rel=0.03)


def test_flop_matched_peer_is_the_dense_family_with_equal_counted_flops():
    case = tiny_case("qwen2_moe")
    for rule, key in (("flop_matched", "flops_per_token"), ("param_matched", "params_total")):
        peer = accounting.matched_dense(case.model, case.moe, rule)
        assert (peer.source, peer.config) == ("hf", "qwen2")
        target = accounting.summary(case.model, case.moe)[key]
        assert accounting.match_error(accounting.summary(peer, None)[key], target) < 0.01


HF_SUITE = """
name: hf
model: {source: hf, config: mixtral, vocab_size: 64, d_model: 32, n_layers: 2, n_heads: 4, n_kv_heads: 2, d_ff: 64, seq_len: 16}
moe: {num_experts: 4, top_k: 2}
run: {batch_size: 2, warmup: 1, repeats: 2, device: cpu, measure_energy: false, threads: 1, decode_tokens: 4}
workloads: [decode]
"""


def test_family_architecture_fills_unset_keys_and_peer_is_shared(write_suite):
    suite = load_suite(write_suite(HF_SUITE + "sweep: {grid: {run.hf_experts_implementation: [eager, batched_mm]}}\n"))
    expansion = expand(suite)
    moe_cases = [c for c in expansion if c.kind == "moe"]
    assert len(moe_cases) == 2 and len(expansion) == 3  # both implementations share one dense peer
    case = moe_cases[0]
    assert (case.model.activation, case.model.norm, case.model.positional) == ("swiglu", "rmsnorm", "rope")
    assert case.moe.capacity_factor is None and case.moe.renormalize
    dense = next(c for c in expansion if c.kind == "dense")
    assert (dense.model.config, dense.run.hf_experts_implementation) == ("mistral", None)


def test_side_by_side_sweep_keeps_each_source_once(write_suite):
    suite = load_suite(write_suite(HF_SUITE + """
sweep:
  grid:
    model.source: [native, hf]
    run.hf_experts_implementation: [eager, grouped_mm]
"""))
    cases = [c for c in expand(suite) if c.kind == "moe"]
    assert sorted((c.model.source, c.run.hf_experts_implementation) for c in cases) == [
        ("hf", "eager"), ("hf", "grouped_mm"), ("native", None)]


@pytest.mark.parametrize("key, value", [("moe.capacity_factor", 1.0), ("moe.router", "sigmoid_bias"),
                                        ("moe.num_shared_experts", 1), ("moe.renormalize", False)])
def test_a_swept_key_the_family_cannot_express_is_refused(write_suite, capsys, key, value):
    path = write_suite(HF_SUITE + f"sweep: {{grid: {{{key}: [{str(value).lower()}]}}}}\n")
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert key in err and "mixtral cannot express" in err and "Traceback" not in err


def test_a_multi_rank_hf_case_is_refused(write_suite, capsys):
    assert main(["validate", str(write_suite(HF_SUITE + "parallel: {nproc: 2}\n"))]) == 2
    assert "parallel.nproc=2" in capsys.readouterr().err


def test_unknown_experts_implementation_lists_what_transformers_offers(write_suite):
    with pytest.raises(SuiteError) as err:
        load_suite(write_suite(HF_SUITE), ("run.hf_experts_implementation=magic",))
    offered = experts_implementations()
    assert {"eager", "batched_mm", "grouped_mm"} <= set(offered)
    assert "'magic'" in str(err.value) and all(name in str(err.value) for name in offered)


HIDE_TRANSFORMERS = """
import sys
from importlib.abc import MetaPathFinder

class Hide(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "transformers":
            raise ModuleNotFoundError(name)

sys.meta_path.insert(0, Hide())
from harness.cli import main
sys.exit(main(["validate", sys.argv[1]]))
"""


def test_without_transformers_the_hf_source_fails_at_load_with_the_install_command(write_suite):
    path = write_suite(HF_SUITE)
    proc = subprocess.run([sys.executable, "-c", HIDE_TRANSFORMERS, str(path)], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert "pip install 'moe-harness[hf]'" in proc.stderr and "Traceback" not in proc.stderr


def test_routing_statistics_from_router_logits_equal_the_harness_layers(one_thread):
    native, hf = pair("mixtral")
    tokens = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(3))
    stats = []
    for model in (native, hf):
        routing.reset(model)
        with torch.no_grad():
            model(tokens)
        stats.append(routing.collect(model))
    (ours, our_layers), (theirs, their_layers) = stats
    assert [r["tokens_per_expert"] for r in our_layers] == [r["tokens_per_expert"] for r in their_layers]
    for name in routing.CASE_COLUMNS:
        assert theirs[name] == pytest.approx(ours[name], rel=1e-5), name
    hf.train()
    routing.reset(hf)
    routing.collect(hf)  # recording is off again: a timed forward asks transformers for nothing extra
    assert not hf.recording


def test_decoding_through_the_hf_cache_matches_the_full_forward(one_thread):
    _, hf = pair("qwen2_moe")
    tokens = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        full, _ = hf(tokens)
        cache = hf.make_caches(2, "cpu", torch.float32)
        for _ in range(2):  # decoding again from the same prefix crops the cache back first
            hf(tokens[:, :10], cache)
            steps = [hf(tokens[:, p : p + 1], cache, p)[0] for p in range(10, 16)]
    assert torch.allclose(torch.cat(steps, dim=1), full[:, 10:], atol=1e-5)


def doubled_loop(x, plan, experts):
    return 2 * loop(x, plan, experts)


def hf_eager_copy(experts, hidden_states, top_k_index, top_k_weights):
    return type(experts).forward.__wrapped__(experts, hidden_states, top_k_index, top_k_weights)


def test_user_implementations_are_checked_against_the_reference(one_thread):
    good = tiny_case("mixtral", source="native", impl="harness.models.moe.dispatch:grouped")
    impl_check.check(build_model(good), good)
    bad = tiny_case("mixtral", source="native", impl="tests.test_hf:doubled_loop")
    with pytest.raises(impl_check.ImplementationMismatch, match="doubled_loop"):
        impl_check.check(build_model(bad), bad)
    hf_case = tiny_case("mixtral", hf_impl="tests.test_hf:hf_eager_copy")
    model = build_model(hf_case)
    impl_check.check(model, hf_case)
    assert model.impl_label == "hf:tests.test_hf:hf_eager_copy"


def test_measure_hf_case_in_process(one_thread):
    """train_step on an hf case: counted FLOPs in the row, routing from the router logits, aux losses
    per step in the step log, and the implementation transformers ran in `impl`."""
    from harness.worker import measure

    case = tiny_case("qwen3_moe", hf_impl="batched_mm").model_copy(
        update={"run": RunSettings(device="cpu", batch_size=2, warmup=1, repeats=2, measure_energy=False,
                                   hf_experts_implementation="batched_mm")})
    result = measure(case, "train_step")
    row = result["row"]
    assert row["impl"] == "hf:batched_mm"
    # older transformers count a rotary-table matmul that does not grow with the batch: 1e-4 of the total
    assert row["measured_flops_per_token"] == pytest.approx(accounting.summary(case.model, case.moe)["flops_per_token"], rel=1e-3)
    assert row["load_cv"] >= 0 and row["router_entropy"] > 0 and row["train_loss"] > 0
    assert len(result["routing_layers"]) == 1 and result["routing_layers"][0]["layer"] == 1
    assert all(step["aux_loss"] > 0 for step in result["steps"])


@pytest.mark.slow
def test_hf_suite_runs_end_to_end_with_its_dense_peer(write_suite, tmp_path):
    import pandas as pd

    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "harness", "run", str(write_suite(HF_SUITE)), "--out", str(out),
                           "--no-report", "--quiet"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    df = pd.read_csv(out / "results.csv")
    assert sorted(df["kind"]) == ["dense", "moe"] and (df["status"] == "ok").all()
    moe, dense = df[df.kind == "moe"].iloc[0], df[df.kind == "dense"].iloc[0]
    assert (moe["source"], moe["hf_family"], dense["hf_family"]) == ("hf", "mixtral", "mistral")
    assert moe["matched_to"] == dense["case_id"] and moe["flop_match_error"] < 0.01
    assert (df["ttft_ms"] > 0).all() and (df["per_token_ms"] > 0).all()
    assert moe["router_entropy"] > 0 and moe["dropped_fraction"] == 0


def test_local_checkpoint_fixes_the_shapes_and_loads_its_weights(write_suite, tmp_path, one_thread):
    torch.manual_seed(5)
    saved = build_model(tiny_case("olmoe")).eval()
    saved.hf.save_pretrained(tmp_path / "ckpt")
    suite = load_suite(write_suite(f"""
name: ckpt
model: {{source: hf, path: {tmp_path / 'ckpt'}, seq_len: 16}}
run: {{device: cpu}}
"""))
    case = next(c for c in expand(suite) if c.kind == "moe")
    assert (case.model.config, case.model.d_model, case.moe.num_experts, case.moe.d_expert) == ("olmoe", 32, 4, 24)
    loaded = build_model(case).eval()
    tokens = torch.randint(0, 64, (1, 16))
    with torch.no_grad():
        assert torch.equal(loaded(tokens)[0], saved(tokens)[0])
    with pytest.raises(SuiteError, match="moe.num_experts=8 .the checkpoint has 4"):
        expand(load_suite(write_suite(f"""
name: ckpt
model: {{source: hf, path: {tmp_path / 'ckpt'}, seq_len: 16}}
sweep: {{grid: {{moe.num_experts: [8]}}}}
""")))
