"""Progress of a run: a live bar on a terminal, one plain line per case otherwise (CI logs)."""
from __future__ import annotations

import sys
import time
from typing import Any


class Progress:
    def __init__(self, total: int, done: int = 0, quiet: bool = False, stream=None):
        self.total, self.done, self.quiet = total, done, quiet
        self.stream = stream or sys.stdout
        self.started = time.perf_counter()
        self.finished_here = 0
        self._live = None
        self._task = None

    def __enter__(self) -> "Progress":
        if not self.quiet and self.stream.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self._live = RichProgress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
            )
            self._live.start()
            self._task = self._live.add_task("starting", total=self.total, completed=self.done)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.stop()

    def eta_s(self) -> float | None:
        if not self.finished_here:
            return None
        per_case = (time.perf_counter() - self.started) / self.finished_here
        return per_case * (self.total - self.done)

    def start(self, case_id: str, kind: str, workload: str) -> None:
        if self._live is not None:
            self._live.update(self._task, description=f"{case_id} {kind:5} {workload}")

    def finish(self, row: dict[str, Any], seconds: float, note: str = "") -> None:
        self.done += 1
        self.finished_here += 1
        if self.quiet:
            return
        if row["status"] == "ok":
            what = f"{row.get('tokens_per_s', float('nan')):,.0f} tok/s"
        else:
            what = f"{row['status'].upper()}: {row.get('error')}"
        if note:
            what += f", {note}"
        if row.get("contended"):
            what += f" [contended: {row.get('contention_reason')}]"
        line = f"[{self.done}/{self.total}] {row['case_id']} {row['kind']:5} {row['workload']:<10} {what} ({seconds:.1f} s)"
        if self._live is not None:
            self._live.console.print(line, markup=False, highlight=False)
            self._live.update(self._task, completed=self.done)
        else:
            eta = self.eta_s()
            suffix = f", eta {eta:.0f} s" if eta is not None else ""
            print(line[:-1] + f"{suffix})", file=self.stream, flush=True)
