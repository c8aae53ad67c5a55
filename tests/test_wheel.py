"""A wheel install works like the checkout: built, installed in a fresh venv outside the checkout, and
the commands README names first run from there with the suites shipped as package data."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import torch

from harness import shipped

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_checkout_links_the_one_suites_folder():
    assert (ROOT / "harness" / "suites").resolve() == (ROOT / "suites").resolve()
    assert shipped.names() == sorted(p.stem for p in (ROOT / "suites").glob("*.yaml"))


def test_suite_arguments_take_a_shipped_name_and_paths_win(tmp_path, monkeypatch):
    assert shipped.resolve("gpu-smoke") == shipped.resolve("gpu-smoke.yaml") == str(shipped.suite("gpu-smoke"))
    assert shipped.resolve("suites/nope.yaml") == "suites/nope.yaml" and shipped.resolve("nope") == "nope"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "smoke.yaml").write_text("name: mine\n")
    assert shipped.resolve("smoke.yaml") == "smoke.yaml"  # a file the user has wins over the shipped one
    with pytest.raises(FileNotFoundError, match="shipped: .*smoke"):
        shipped.suite("nope")


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """(python of a fresh venv holding the built wheel, the wheel). Dependencies come from this
    interpreter's site-packages through a .pth line, so nothing is downloaded."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"  # a copy, so the build leaves no build/ or egg-info in the checkout
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "harness", src / "harness", symlinks=True, ignore=ignore)
    shutil.copytree(ROOT / "suites", src / "suites", ignore=ignore)
    built = _run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q",
                  "-w", str(tmp / "dist")], cwd=tmp)
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp / "dist").glob("moe_harness-*.whl")

    venv = tmp / "venv"
    made = _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp)
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp)
                .stdout.strip())
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    done = _run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)], cwd=tmp)
    assert done.returncode == 0, done.stderr
    return python, wheel


def test_wheel_ships_every_suite(installed):
    _, wheel = installed
    inside = {Path(n).stem for n in zipfile.ZipFile(wheel).namelist() if n.startswith("harness/suites/")}
    assert inside == set(shipped.names())


def test_installed_package_is_the_wheel_not_the_checkout(installed, tmp_path):
    python, _ = installed
    where = _run([str(python), "-c", "import harness; print(harness.__file__)"], cwd=tmp_path)
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(python.parent.parent)


def test_validate_runs_a_shipped_suite_by_name(installed, tmp_path):
    python, _ = installed
    out = _run([str(python), "-m", "harness", "validate", "smoke"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "suite 'smoke'" in out.stdout and str(python.parent.parent) in out.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the smoke check would run its suite")
def test_gpu_smoke_says_no_gpu_from_the_wheel(installed, tmp_path):
    python, _ = installed
    out = _run([str(python), "-m", "harness.gpu_smoke"], cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert "no CUDA GPU" in out.stderr and "Traceback" not in out.stderr
