"""A corpus of hostile and careless suites: each must be refused with exit 2 and one line naming the key.

Part of it is generated from the schema (every field of `model`, `moe` and `run` gets the wrong types,
out-of-range and non-finite values its annotation rules out, directly and through a sweep), so a field
added later is covered without editing this file; the rest is written by hand per category: duplicate
keys, aliases, nesting, encodings, tags, sweeps, zips, workloads, presets, paths and cross-field rules.
"""
from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Any, Iterator

import annotated_types

from harness.suite import SWEEPABLE_SECTIONS

SIDE_EFFECT_PACKAGE = "hostile_sidefx"  # a package whose import writes a file; the tests put it on sys.path


@dataclass(frozen=True)
class Hostile:
    category: str
    name: str
    content: bytes
    key: str  # what the one-line message must name (a dotted key, a line number, a path part)
    overrides: tuple[str, ...] = ()
    generated: bool = False  # one bad scalar per schema field, vs. written by hand


def _text(category: str, name: str, text: str, key: str, overrides: tuple[str, ...] = (), generated: bool = False) -> Hostile:
    return Hostile(category, name, text.encode(), key, overrides, generated)


def _leaves(annotation: Any) -> list[tuple[Any, list[Any]]]:
    """(type, constraints) of each non-None alternative of a field annotation."""
    if typing.get_origin(annotation) is typing.Annotated:
        inner, *meta = typing.get_args(annotation)
        return [(t, m + list(meta)) for t, m in _leaves(inner)]
    if typing.get_origin(annotation) is typing.Union:
        return [leaf for arg in typing.get_args(annotation) if arg is not type(None) for leaf in _leaves(arg)]
    return [(annotation, [])]


def _out_of_range(constraints: list[Any], is_int: bool) -> list[tuple[str, str]]:
    bad = []
    for c in constraints:
        if isinstance(c, annotated_types.Gt):
            bad.append((f"le_{c.gt}", str(c.gt)))
        elif isinstance(c, annotated_types.Ge):
            bad.append((f"below_{c.ge}", str(c.ge - 1 if is_int else c.ge - 0.5)))
        elif isinstance(c, annotated_types.Lt):
            bad.append((f"ge_{c.lt}", str(c.lt)))
        elif isinstance(c, annotated_types.Le):
            bad.append((f"above_{c.le}", str(c.le + 1 if is_int else c.le * 2 + 1)))
    return bad


def bad_values(field: Any) -> list[tuple[str, str]]:
    """YAML texts that no field with this annotation may accept (the strict, finite schema)."""
    leaves = _leaves(field.annotation)
    types = {t for t, _ in leaves}
    if all(typing.get_origin(t) is list for t in types):  # run.seeds: a list of non-negative ints
        return [("scalar", "3"), ("mapping", "{a: 1}"), ("strings", "['a']"), ("empty", "[]"), ("negative", "[-1]"),
                ("huge", f"[{2**64}]")]
    constraints = [c for _, cs in leaves for c in cs] + list(field.metadata)
    bad: list[tuple[str, str]] = [("list", "[1]"), ("mapping", "{a: 1}")]
    if int in types:
        bad += [("bool", "true"), ("string", "'3'"), ("fraction", "2.5"), ("huge", str(2**64))]
        bad += _out_of_range(constraints, is_int=True)
    elif float in types:
        bad += [("nan", ".nan"), ("inf", ".inf"), ("neg_inf", "-.inf"), ("bool", "false"), ("string", "'1.0'"), ("huge", "1.0e+400")]
        bad += _out_of_range(constraints, is_int=False)
    elif bool in types:
        bad += [("int", "1"), ("string", "'yes'")]
    elif all(typing.get_origin(t) is typing.Literal for t in types):
        bad += [("unknown", "not_a_choice"), ("int", "7")]
    elif str in types:
        bad += [("int", "3")]
    return bad


def schema_cases() -> Iterator[Hostile]:
    for section, cls in SWEEPABLE_SECTIONS.items():
        for name, field in cls.model_fields.items():
            key = f"{section}.{name}"
            bad = bad_values(field)
            for label, value in bad:
                yield _text("types and ranges", f"{key}={label}", f"name: x\n{section}: {{{name}: {value}}}\n", key, generated=True)
            label, value = bad[2] if len(bad) > 2 else bad[0]  # the first value specific to the field's type
            yield _text("sweeps", f"sweep {key}={label}", f"name: x\nsweep: {{grid: {{{key}: [{value}]}}}}\n", key, generated=True)
            yield _text("overrides", f"--set {key}={label}", "name: x\n", key, (f"{key}={value}",), generated=True)


def _laughs(levels: int = 9) -> str:
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines)


PKG = SIDE_EFFECT_PACKAGE

HANDWRITTEN: list[Hostile] = [
    # duplicate keys: the later value would silently replace the earlier one
    _text("duplicate keys", "top-level run twice", "name: x\nrun: {seed: 1, batch_size: 2}\nrun: {seed: 2}\n", "'run'"),
    _text("duplicate keys", "name twice", "name: x\nname: y\n", "'name'"),
    _text("duplicate keys", "nested key twice", "name: x\nmodel:\n  d_model: 64\n  d_model: 128\n", "'d_model'"),
    _text("duplicate keys", "flow mapping", "name: x\nmoe: {top_k: 1, top_k: 2}\n", "'top_k'"),
    _text("duplicate keys", "grid axis twice", "name: x\nsweep:\n  grid:\n    moe.top_k: [1]\n    moe.top_k: [2]\n", "'moe.top_k'"),
    _text("duplicate keys", "sweep twice", "name: x\nsweep: {grid: {moe.top_k: [1]}}\nsweep: {}\n", "'sweep'"),
    _text("duplicate keys", "zip group key twice", "name: x\nsweep: {zip: [{model.d_model: [64], model.d_model: [128]}]}\n", "'model.d_model'"),
    _text("duplicate keys", "quoted and plain", "name: x\n'run': {}\nrun: {}\n", "'run'"),
    # aliases
    _text("aliases", "billion laughs in description", f"name: x\n{_laughs()}\ndescription: *l8\n", "aliases"),
    _text("aliases", "billion laughs in workloads", f"name: x\n{_laughs()}\nworkloads: *l8\n", "aliases"),
    _text("aliases", "billion laughs in a grid", f"name: x\n{_laughs()}\nsweep: {{grid: {{moe.top_k: *l8}}}}\n", "aliases"),
    _text("aliases", "recursive alias", "name: x\nmodel: &m {d_model: *m}\n", "own anchor"),
    _text("aliases", "recursive list", "name: x\nworkloads: &w [forward, *w]\n", "own anchor"),
    _text("aliases", "alias chain too deep", "name: x\n" + "".join(f"a{i}: &a{i} [{'*a' + str(i - 1) if i else 1}]\n" for i in range(40)), "nested deeper"),
    _text("aliases", "undefined alias", "name: x\nmodel: *nothing\n", "line 2"),
    _text("aliases", "aliased mapping reused wrongly", "name: x\nrun: &r {seed: 1}\nmodel: *r\n", "model.seed"),
    # nesting
    _text("nesting", "deep flow list", "name: x\ndescription: " + "[" * 600 + "]" * 600 + "\n", "nested deeper"),
    _text("nesting", "deep block mapping", "name: x\nmodel:\n" + "".join("  " * (i + 1) + f"k{i}:\n" for i in range(60)), "nested deeper"),
    _text("nesting", "deep flow mapping", "name: x\nrun: " + "{a: " * 200 + "1" + "}" * 200 + "\n", "nested deeper"),
    _text("nesting", "deep block sequence", "name: x\nworkloads:\n" + "".join("  " * i + "- \n" for i in range(1, 50)) + "  " * 50 + "- forward\n", "nested deeper"),
    _text("nesting", "deep grid value", "name: x\nsweep: {grid: {moe.top_k: " + "[" * 40 + "1" + "]" * 40 + "}}\n", "nested deeper"),
    _text("nesting", "nested list as value", "name: x\nmodel: {d_model: [[[64]]]}\n", "model.d_model"),
    # encodings
    Hostile("encodings", "latin-1", "name: x\ndescription: caf\xe9\n".encode("latin-1"), "not UTF-8"),
    Hostile("encodings", "utf-16", "name: x\n".encode("utf-16"), "not UTF-8"),
    Hostile("encodings", "utf-32", "name: x\n".encode("utf-32"), "not UTF-8"),
    Hostile("encodings", "invalid continuation byte", b"name: x\ndescription: \xc3\x28\n", "not UTF-8"),
    Hostile("encodings", "encoded surrogate", b"name: x\ndescription: \xed\xa0\x80\n", "not UTF-8"),
    Hostile("encodings", "NUL byte", b"name: x\x00\n", "unacceptable character"),
    Hostile("encodings", "control character", b"name: x\ndescription: a\x07b\n", "unacceptable character"),
    Hostile("encodings", "binary garbage", bytes(range(256)) * 4, "not UTF-8"),
    _text("encodings", "name with unicode", "name: caf\u00e9\n", "name"),
    _text("encodings", "name with a slash", "name: ../../etc\n", "name"),
    # tags
    _text("tags", "python object", "name: x\nmodel: !!python/object/apply:os.system ['touch /tmp/hostile-pwned']\n", "python/object"),
    _text("tags", "python name", "name: !!python/name:os.system\n", "python/name"),
    _text("tags", "python module", "name: x\nrun: !!python/module:os\n", "python/module"),
    _text("tags", "custom tag", "name: x\nmodel: !include other.yaml\n", "!include"),
    _text("tags", "binary as name", "name: !!binary aGVsbG8=\n", "name"),
    _text("tags", "timestamp as name", "name: 2024-01-01\n", "name"),
    _text("tags", "timestamp as seed", "name: x\nrun: {seed: 2024-01-01}\n", "run.seed"),
    _text("tags", "set as workloads", "name: x\nworkloads: !!set {forward, decode}\n", "workloads"),
    _text("tags", "str tag on an int", "name: x\nmodel: {d_model: !!str 64}\n", "model.d_model"),
    _text("tags", "bad timestamp", "name: x\ndescription: !!timestamp 2024-13-45\n", "cannot read a value"),
    _text("tags", "base-60 number", "name: x\nrun: {seed: 1:30}\n", "base-60"),
    _text("tags", "huge integer literal", f"name: x\nrun: {{seed: {'9' * 5000}}}\n", "cannot read a value"),
    # sweeps
    _text("sweeps", "empty axis", "name: x\nsweep: {grid: {moe.top_k: []}}\n", "moe.top_k"),
    _text("sweeps", "scalar axis", "name: x\nsweep: {grid: {moe.top_k: 2}}\n", "moe.top_k"),
    _text("sweeps", "unknown key", "name: x\nsweep: {grid: {moe.topk: [1]}}\n", "moe.topk"),
    _text("sweeps", "key without section", "name: x\nsweep: {grid: {top_k: [1]}}\n", "top_k"),
    _text("sweeps", "unknown section", "name: x\nsweep: {grid: {mode.d_model: [64]}}\n", "mode.d_model"),
    _text("sweeps", "sweeping a section", "name: x\nsweep: {grid: {moe: [{}]}}\n", "moe"),
    _text("sweeps", "top-level key swept", "name: x\nsweep: {grid: {workloads: [[forward]]}}\n", "workloads"),
    _text("sweeps", "grid and zip share a key", "name: x\nsweep: {grid: {moe.top_k: [1]}, zip: [{moe.top_k: [1]}]}\n", "moe.top_k"),
    _text("sweeps", "grid is a list", "name: x\nsweep: {grid: [moe.top_k]}\n", "sweep.grid"),
    _text("sweeps", "unknown sweep kind", "name: x\nsweep: {product: {moe.top_k: [1]}}\n", "sweep.product"),
    _text("sweeps", "64 million points", "name: x\nsweep:\n  grid:\n" + "".join(f"    model.{k}: [{', '.join(str(v) for v in range(1, 21))}]\n" for k in ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "seq_len")), "max_cases"),
    _text("sweeps", "over max_cases", "name: x\nmax_cases: 10\nsweep: {grid: {moe.num_experts: [2, 4, 8, 16, 32, 64]}}\n", "max_cases"),
    _text("sweeps", "unhashable value", "name: x\nworkloads: [forward]\nsweep: {grid: {run.dtype: [[float16]]}}\n", "run.dtype"),
    _text("sweeps", "point breaks a cross-field rule", "name: x\nmoe: {num_experts: 2}\nsweep: {grid: {moe.top_k: [1, 3]}}\n", "top_k"),
    _text("sweeps", "key given as a number", "name: x\nsweep: {grid: {1: [1]}}\n", "sweep.grid"),
    _text("sweeps", "max_cases zero", "name: x\nmax_cases: 0\n", "max_cases"),
    _text("sweeps", "max_cases as bool", "name: x\nmax_cases: true\n", "max_cases"),
    # zips
    _text("zips", "unequal lengths", "name: x\nsweep: {zip: [{model.d_model: [32, 64], model.n_heads: [2]}]}\n", "sweep.zip"),
    _text("zips", "empty group", "name: x\nsweep: {zip: [{}]}\n", "sweep.zip"),
    _text("zips", "empty lists", "name: x\nsweep: {zip: [{model.d_model: []}]}\n", "sweep.zip"),
    _text("zips", "zip is a mapping", "name: x\nsweep: {zip: {model.d_model: [64]}}\n", "sweep.zip"),
    _text("zips", "group is a list", "name: x\nsweep: {zip: [[model.d_model, 64]]}\n", "sweep.zip"),
    _text("zips", "key in two groups", "name: x\nsweep: {zip: [{moe.top_k: [1]}, {moe.top_k: [2]}]}\n", "moe.top_k"),
    _text("zips", "unknown key", "name: x\nsweep: {zip: [{model.dmodel: [64]}]}\n", "model.dmodel"),
    _text("zips", "zipped point invalid", "name: x\nsweep: {zip: [{model.d_model: [30, 64], model.n_heads: [4, 4]}]}\n", "n_heads"),
    _text("zips", "over max_cases", "name: x\nmax_cases: 3\nsweep: {zip: [{moe.top_k: [1, 1, 1, 1]}]}\n", "max_cases"),
    # workloads
    _text("workloads", "unknown built-in", "name: x\nworkloads: [forwards]\n", "forwards"),
    _text("workloads", "empty list", "name: x\nworkloads: []\n", "workloads"),
    _text("workloads", "listed twice", "name: x\nworkloads: [forward, forward]\n", "workloads"),
    _text("workloads", "a string, not a list", "name: x\nworkloads: forward\n", "workloads"),
    _text("workloads", "null entry", "name: x\nworkloads: [null]\n", "workloads"),
    _text("workloads", "missing module", "name: x\nworkloads: ['nosuch_pkg_hostile.mod:run']\n", "nosuch_pkg_hostile"),
    _text("workloads", "missing submodule", f"name: x\nworkloads: ['{PKG}.nothere:make']\n", "nothere"),
    _text("workloads", "missing function", f"name: x\nworkloads: ['{PKG}.workload:nothere']\n", "nothere"),
    _text("workloads", "syntax error in module", f"name: x\nworkloads: ['{PKG}.broken:make']\n", "syntax error"),
    _text("workloads", "two colons", "name: x\nworkloads: ['tests.faults:raises:again']\n", "workloads"),
    _text("workloads", "empty function", "name: x\nworkloads: ['tests.faults:']\n", "workloads"),
    _text("workloads", "empty module", "name: x\nworkloads: [':raises']\n", "workloads"),
    _text("workloads", "relative module", "name: x\nworkloads: ['.faults:raises']\n", "workloads"),
    _text("workloads", "path as module", "name: x\nworkloads: ['../../tmp/x:run']\n", "workloads"),
    _text("workloads", "spaces in module", "name: x\nworkloads: ['my module:run']\n", "workloads"),
    _text("workloads", "decode too long", "name: x\nworkloads: [decode]\nmodel: {seq_len: 8}\nrun: {decode_tokens: 8}\n", "run.decode_tokens"),
    _text("workloads", "decode with expert choice", "name: x\nworkloads: [decode]\nmoe: {router: expert_choice}\n", "moe.router"),
    _text("workloads", "quality below a byte vocabulary", "name: x\nworkloads: [quality]\nmodel: {vocab_size: 64}\n", "model.vocab_size"),
    _text("workloads", "float16 training", "name: x\nworkloads: [train_step]\nrun: {dtype: float16}\n", "run.dtype"),
    _text("workloads", "decode too long in a sweep", "name: x\nworkloads: [decode]\nsweep: {grid: {model.seq_len: [64, 16]}}\n", "run.decode_tokens"),
    # presets
    _text("presets", "unknown preset", "name: x\nmodel: {preset: mixtral-9x9b}\n", "model.preset"),
    _text("presets", "preset is a list", "name: x\nmodel: {preset: [mixtral-8x7b]}\n", "model.preset"),
    _text("presets", "preset is null", "name: x\nmodel: {preset: null}\n", "model.preset"),
    _text("presets", "preset is a mapping", "name: x\nmodel: {preset: {name: mixtral-8x7b}}\n", "model.preset"),
    _text("presets", "bad override beside a preset", "name: x\nmodel: {preset: mixtral-8x7b, n_heads: 7}\n", "model"),
    _text("presets", "preset in the moe block", "name: x\nmoe: {preset: mixtral-8x7b}\n", "moe.preset"),
    _text("presets", "moe block a list beside a preset", "name: x\nmodel: {preset: mixtral-8x7b}\nmoe: [1]\n", "moe"),
    # top level and paths
    _text("top level", "empty file", "", "empty"),
    _text("top level", "only comments", "# nothing here\n", "empty"),
    _text("top level", "a list", "- name: x\n", "mapping"),
    _text("top level", "a scalar", "just text\n", "mapping"),
    _text("top level", "two documents", "name: x\n---\nname: y\n", "another document"),
    _text("top level", "missing name", "model: {d_model: 64}\n", "name"),
    _text("top level", "unknown key", "name: x\nbaseline: [flop_matched]\n", "baseline"),
    _text("top level", "unknown baseline rule", "name: x\nbaselines: [iso_flop]\n", "baselines"),
    _text("top level", "name too long", f"name: {'n' * 300}\n", "name"),
    _text("top level", "name is null", "name: null\n", "name"),
    _text("top level", "section is a list", "name: x\nrun: [1, 2]\n", "run"),
    _text("top level", "section is null", "name: x\nmodel: null\n", "model"),
    _text("top level", "malformed flow", "name: x\nmodel: {d_model: 64\n", "line 3"),
    _text("top level", "tab indentation", "name: x\nmodel:\n\td_model: 64\n", "line 3"),
    _text("top level", "larger than 1 MiB", "name: x\ndescription: '" + "x" * (1 << 20) + "'\n", "larger than"),
    # cross-field rules that used to fail only at run time
    _text("ranges", "top_k above num_experts", "name: x\nmoe: {num_experts: 2, top_k: 3}\n", "top_k"),
    _text("ranges", "switch router top-2", "name: x\nmoe: {router: switch, top_k: 2}\n", "router"),
    _text("ranges", "switch router fine-grained", "name: x\nmoe: {router: switch, top_k: 1, granularity: 2}\n", "router"),
    _text("ranges", "expert choice forced balance", "name: x\nmoe: {router: expert_choice, routing_mode: balanced}\n", "router"),
    _text("ranges", "rope with an odd head size", "name: x\nmodel: {positional: rope, d_model: 12, n_heads: 4}\n", "rope"),
    _text("ranges", "d_model not divisible", "name: x\nmodel: {d_model: 30, n_heads: 4}\n", "n_heads"),
    _text("ranges", "kv heads above heads", "name: x\nmodel: {n_heads: 4, n_kv_heads: 8}\n", "n_kv_heads"),
    _text("ranges", "no MoE layer", "name: x\nmodel: {n_layers: 2}\nmoe: {first_dense: 2}\n", "first_dense"),
    _text("ranges", "model too large for int64", "name: x\nmodel: {d_model: 4611686018427387904, n_heads: 1, d_ff: 4611686018427387904}\n", "64-bit"),
    # overrides
    _text("overrides", "no equals sign", "name: x\n", "--set", ("model.d_model",)),
    _text("overrides", "empty key", "name: x\n", "--set", ("=3",)),
    _text("overrides", "into a scalar", "name: x\n", "--set", ("name.x=1",)),
    _text("overrides", "malformed value", "name: x\n", "--set", ("model.d_model=[64",)),
    _text("overrides", "aliased value", "name: x\n", "--set", ("description=*a",)),
    _text("overrides", "zipped key", "name: x\nsweep: {zip: [{moe.top_k: [1]}]}\n", "--set", ("moe.top_k=2",)),
    _text("overrides", "unknown key", "name: x\n", "model.dmodel", ("model.dmodel=64",)),
    _text("overrides", "into a list", "name: x\n", "workloads", ("workloads.x=1",)),
    _text("overrides", "sweep is a list", "name: x\nsweep: [1]\n", "sweep", ("moe.top_k=2",)),
]


def corpus() -> list[Hostile]:
    return list(schema_cases()) + HANDWRITTEN

