"""Every suite in the hostile corpus is refused: exit 2, one line naming the key, no traceback, bounded
memory, and nothing of the user's is executed. Most checks run in-process (fast); a few run the real
CLI in a subprocess under an address-space cap to prove the exit code and the memory bound end to end."""
from __future__ import annotations

import resource
import subprocess
import sys
import textwrap
import tracemalloc
from collections import Counter
from pathlib import Path

import pytest

from harness.cli import main
from tests.hostile_corpus import SIDE_EFFECT_PACKAGE, corpus

CORPUS = corpus()
MEMORY_LIMIT = 256 << 20  # address space of a subprocess `validate`; a clean one needs about 100 MiB
TRACED_LIMIT = 16 << 20  # Python allocations of one in-process refusal


@pytest.fixture(scope="module")
def side_effect_package(tmp_path_factory):
    """A package whose every module writes a marker file when imported: validate and list must not run it."""
    root = tmp_path_factory.mktemp("sidefx")
    package = root / SIDE_EFFECT_PACKAGE
    package.mkdir()
    marker = "import pathlib; (pathlib.Path(__file__).parent.parent / ('ran-' + __name__)).touch()\n"
    (package / "__init__.py").write_text(marker)
    (package / "workload.py").write_text(marker + "def make(model, case, device):\n    raise RuntimeError('ran')\n")
    (package / "broken.py").write_text(marker + "def make(:\n")
    sys.path.insert(0, str(root))
    yield root
    sys.path.remove(str(root))
    for name in [m for m in sys.modules if m.split(".")[0] == SIDE_EFFECT_PACKAGE]:
        del sys.modules[name]


def _refusal(tmp_path: Path, capsys, item) -> tuple[int, str, int]:
    """Exit code, stderr and the peak of traced Python allocations. The generated one-value cases
    (a scalar of a few bytes in a tiny file) are not traced: tracing costs 5x the time and nothing
    in them can grow; every handwritten case is."""
    path = tmp_path / "suite.yaml"
    path.write_bytes(item.content)
    argv = ["validate", str(path), *(arg for o in item.overrides for arg in ("--set", o))]
    traced = item.generated is False
    if traced:
        tracemalloc.start()
    try:
        code = main(argv)
        peak = tracemalloc.get_traced_memory()[1] if traced else 0
    finally:
        tracemalloc.stop()
    captured = capsys.readouterr()
    assert not captured.out, f"{item.name}: printed {captured.out!r}"
    return code, captured.err, peak


def test_corpus_size_and_coverage():
    categories = Counter(item.category for item in CORPUS)
    assert len(CORPUS) >= 100
    for category in ("types and ranges", "duplicate keys", "aliases", "nesting", "encodings", "tags", "sweeps",
                     "zips", "workloads", "presets", "top level", "ranges", "overrides"):
        assert categories[category] >= 5, category
    assert len({(item.category, item.name) for item in CORPUS}) == len(CORPUS)


def test_every_hostile_suite_is_refused_in_one_line(tmp_path, capsys, side_effect_package):
    failures = []
    for item in CORPUS:
        code, err, peak = _refusal(tmp_path, capsys, item)
        lines = err.strip().splitlines()
        problems = [
            f"exit {code}" if code != 2 else "",
            f"{len(lines)} lines" if len(lines) != 1 else "",
            "traceback" if "Traceback" in err else "",
            f"key {item.key!r} not named" if item.key not in err else "",
            f"{peak / 2**20:.0f} MiB traced" if peak > TRACED_LIMIT else "",
            "" if err.startswith("error: ") else "no 'error:' prefix",
        ]
        problems = [p for p in problems if p]
        if problems:
            failures.append(f"[{item.category}] {item.name}: {', '.join(problems)}: {err.strip()[:200]}")
    assert not failures, "\n".join(failures)
    assert not list(side_effect_package.glob("ran-*")), "validate imported the user's workload package"
    assert not Path("/tmp/hostile-pwned").exists()


def test_validate_and_list_find_a_workload_without_running_it(tmp_path, capsys, side_effect_package):
    path = tmp_path / "ok.yaml"
    path.write_text(f"name: ok\nworkloads: [forward, '{SIDE_EFFECT_PACKAGE}.workload:make']\nbaselines: []\n")
    assert main(["validate", str(path)]) == 0
    assert main(["list", str(path)]) == 0
    assert "1 cases x 2 workloads" in capsys.readouterr().out
    assert not list(side_effect_package.glob("ran-*"))


def _capped(argv, cwd=None):
    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))

    return subprocess.run(
        [sys.executable, "-m", "harness", *argv], capture_output=True, text=True, preexec_fn=cap, timeout=120, cwd=cwd
    )


@pytest.mark.parametrize("name", [
    "billion laughs in description", "64 million points", "deep flow list", "binary garbage",
    "huge integer literal", "python object",
])
def test_cli_refuses_under_a_memory_cap(tmp_path, name):
    item = next(i for i in CORPUS if i.name == name)
    path = tmp_path / "suite.yaml"
    path.write_bytes(item.content)
    proc = _capped(["validate", str(path)])
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert item.key in proc.stderr


def test_cli_list_does_not_import_the_workload_package(tmp_path, side_effect_package):
    path = tmp_path / "ok.yaml"
    path.write_text(textwrap.dedent(f"""
        name: ok
        workloads: ['{SIDE_EFFECT_PACKAGE}.workload:make']
    """))
    proc = subprocess.run(
        [sys.executable, "-m", "harness", "list", str(path)], capture_output=True, text=True, timeout=120,
        env={"PYTHONPATH": f"{side_effect_package}:{Path.cwd()}", "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr
    assert not list(side_effect_package.glob("ran-*"))


def test_readme_states_the_corpus_size():
    import re

    stated = re.search(r"corpus of ([\d,]+) such suites", Path("README.md").read_text().replace("\n  ", " "))
    assert stated and int(stated.group(1).replace(",", "")) == len(CORPUS)
