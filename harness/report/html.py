"""Render a report into one self-contained HTML file: plots inlined as PNG data URIs, no network.

jinja2 autoescaping is on for every template, so suite names, descriptions and error messages can
never inject markup; the only inline script is ours and the Content-Security-Policy allows exactly
that script (by hash), so even markup that slipped through could not run code.
"""
from __future__ import annotations

import base64
import hashlib
import io
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from harness.report.plots import Plot

TEMPLATES = Path(__file__).parent / "templates"
DPI = 110


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _script() -> tuple[str, str]:
    """The sortable-table script and its CSP source expression."""
    text = (TEMPLATES / "sortable.js").read_text()
    digest = base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()
    return text, f"'sha256-{digest}'"


def save_plots(plots: list[Plot], plots_dir: Path) -> list[dict[str, Any]]:
    """Write each drawn plot to plots_dir/NAME.png and return template entries with inline data URIs."""
    entries = []
    for plot in plots:
        entry: dict[str, Any] = {"name": plot.name, "title": plot.title, "caption": plot.caption,
                                 "missing": plot.missing, "src": None, "file": None}
        if plot.figure is not None:
            buffer = io.BytesIO()
            plot.figure.savefig(buffer, format="png", dpi=DPI)
            data = buffer.getvalue()
            plots_dir.mkdir(parents=True, exist_ok=True)
            path = plots_dir / f"{plot.name}.png"
            path.write_bytes(data)
            entry["src"] = "data:image/png;base64," + base64.b64encode(data).decode()
            entry["file"] = f"{plots_dir.name}/{path.name}"
        entries.append(entry)
    return entries


def render(template: str, context: dict[str, Any]) -> str:
    script, script_hash = _script()
    return _environment().get_template(template).render(
        **context, sort_script=Markup(script), script_hash=script_hash)
