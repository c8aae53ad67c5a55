"""The CI workflows parse, and every command they name exists: each runs with --help."""
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))


def load(path: Path) -> dict:
    doc = yaml.safe_load(path.read_text())
    doc["on"] = doc.pop(True, doc.get("on"))  # YAML 1.1 reads the key `on` as true
    return doc


def run_lines(doc: dict) -> list[str]:
    return [step["run"] for job in doc["jobs"].values() for step in job["steps"] if "run" in step]


def named_commands(text: str) -> set[tuple[str, ...]]:
    """`python -m harness SUB`, `python -m harness.MODULE` and `scripts/NAME.sh` invocations."""
    found = set()
    for module, sub in re.findall(r"python -m (harness(?:\.\w+)?)(?:[ \t]+([a-z][\w-]*))?", text):
        found.add((sys.executable, "-m", module, sub) if module == "harness" and sub else (sys.executable, "-m", module))
    for script in re.findall(r"(scripts/[\w.-]+\.sh)", text):
        found.add(("bash", str(ROOT / script)))
    return found


def test_workflows_parse_with_the_jobs_ci_expects():
    names = {p.name: load(p) for p in WORKFLOWS}
    nightly, pr = names["nightly.yml"], names["pr-benchmark.yml"]
    assert nightly["on"]["schedule"] and "workflow_dispatch" in nightly["on"]
    assert "self-hosted" in nightly["jobs"]["gpu"]["runs-on"]
    cpu = "\n".join(run_lines({"jobs": {"cpu": nightly["jobs"]["cpu"]}}))
    assert "scripts/nightly.sh" in cpu and "GITHUB_STEP_SUMMARY" in cpu
    uploads = [s for s in nightly["jobs"]["cpu"]["steps"] if s.get("uses", "").startswith("actions/upload-artifact")]
    paths = uploads[0]["with"]["path"]
    for artifact in ("report.html", "trends.html", "compare.md"):
        assert artifact in paths and artifact in (ROOT / "scripts" / "nightly.sh").read_text()
    assert "pull_request" in pr["on"] and "python -m harness ab suites/smoke.yaml" in "\n".join(run_lines(pr))


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.name)
def test_every_command_a_workflow_names_runs_with_help(workflow):
    commands = set().union(*(named_commands(line) for line in run_lines(load(workflow))))
    assert commands
    for command in sorted(commands):
        done = subprocess.run([*command, "--help"], capture_output=True, text=True, cwd=ROOT, timeout=120, check=False)
        assert done.returncode == 0, f"{' '.join(command)} --help: {done.stderr[-500:]}"
        assert "usage" in done.stdout.lower() or "nightly" in done.stdout.lower(), command
