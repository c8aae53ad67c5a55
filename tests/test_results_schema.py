"""One result schema (`harness.results.COLUMNS`): load, the parquet file, compare, the report and the
routing statistics all read it, and disagree with it nowhere."""
import pandas as pd
import pyarrow.parquet as pq

from harness import analysis
from harness.compare import METRICS
from harness.report import MEASURED_METRICS
from harness.results import BOOL, COLUMNS, FLOAT, HIGHER, INT, LOWER, STRING, columns_in
from harness.store import RunStore

ARROW = {STRING: ("string", "large_string"), INT: ("int64",), FLOAT: ("double",), BOOL: ("bool",)}


def test_every_column_is_well_formed():
    for name, column in COLUMNS.items():
        assert column.name == name and column.doc and column.group, name
        assert column.dtype in ARROW, name
        assert column.direction in (None, HIGHER, LOWER), name
        if column.source is not None:
            assert COLUMNS[column.source].dtype == STRING and column.source.endswith("_source"), name


def test_load_and_pairing_read_the_schema():
    assert analysis.DTYPES == {name: c.dtype for name, c in COLUMNS.items()}
    assert analysis.SOURCE_OF["energy_j_per_token"] == "energy_source"
    assert analysis.SOURCE_OF["peak_memory_bytes"] == "memory_source"
    for ratio, metric in analysis.RATIOS.items():
        assert COLUMNS[metric].direction is not None, ratio
    assert analysis.better_above_one("throughput_ratio") and not analysis.better_above_one("latency_ratio")
    assert set(analysis.DENSE_COLUMNS) <= set(COLUMNS)


def test_compare_and_report_metrics_are_schema_columns_with_a_direction():
    for metric in METRICS:
        assert COLUMNS[metric.name].direction is not None, metric.name
    assert {m.name: m.higher_is_better for m in METRICS} == {
        "latency_ms_median": False, "tokens_per_s": True, "peak_memory_bytes": False, "energy_j_per_token": False}
    assert {m.name: m.source for m in METRICS}["energy_j_per_token"] == "energy_source"
    assert {column for column, _ in MEASURED_METRICS} <= set(COLUMNS)


def test_routing_statistics_are_the_schema_routing_group():
    from harness.metrics import routing

    assert routing.CASE_COLUMNS == columns_in("routing")
    assert set(analysis.ROUTING_COLUMNS) == set(columns_in("routing"))


def test_parquet_keeps_counts_as_ints_and_unmeasured_text_as_strings(tmp_path):
    store = RunStore(tmp_path)
    store.append({"case_id": "a1", "workload": "forward", "status": "ok", "kind": "moe", "num_experts": 8, "top_k": 2,
                  "error": None, "noisy": False, "tokens_per_s": 10.0, "energy_j": None, "energy_source": None})
    store.append({"case_id": "d1", "workload": "forward", "status": "failed", "kind": "dense", "num_experts": None,
                  "top_k": None, "error": "boom", "noisy": None, "tokens_per_s": None, "energy_j": None,
                  "energy_source": None, "extra_column": "kept"})
    schema = pq.read_schema(tmp_path / "results.parquet")
    for name in schema.names:
        if name in COLUMNS:
            assert str(schema.field(name).type) in ARROW[COLUMNS[name].dtype], name
    assert str(schema.field("extra_column").type) in ("string", "large_string")
    frame = pd.read_parquet(tmp_path / "results.parquet")
    assert frame["num_experts"].tolist()[0] == 8 and pd.isna(frame["num_experts"].tolist()[1])
    csv = (tmp_path / "results.csv").read_text().splitlines()
    assert ",8,2," in csv[1]  # counts are written as counts, not 8.0


def test_an_old_float_typed_parquet_still_loads_typed(tmp_path):
    pd.DataFrame({"case_id": ["a1"], "kind": ["moe"], "workload": ["forward"], "status": ["ok"],
                  "num_experts": [8.0], "energy_source": [None]}).to_parquet(tmp_path / "results.parquet")
    frame = analysis.load(tmp_path)
    assert str(frame["num_experts"].dtype) == INT and frame["num_experts"].iloc[0] == 8
    assert str(frame["energy_source"].dtype) == "string"
