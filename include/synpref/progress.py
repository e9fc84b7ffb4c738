"""Progress of long steps: counts and rates in the task log every few seconds (a tqdm bar on a terminal).

A user watching a task log (or the CLI) can tell slow work from a hang: RM training, scoring, embedding
and LLM requests all report ``what: done/total (rate/s, elapsed)``.
"""

from __future__ import annotations

import logging
import sys
import time
from types import TracebackType

log = logging.getLogger("synpref")
EVERY_S = 10.0


class Progress:
    """``with Progress("scoring shard-00003", total, "pairs") as p: ... p.update(n)``."""

    def __init__(self, what: str, total: int, unit: str = "pairs", every_s: float = EVERY_S) -> None:
        self.what, self.total, self.unit, self.every_s = what, total, unit, every_s
        self.done, self.start = 0, time.monotonic()
        self.last = self.start
        self.bar = None
        if sys.stderr.isatty() and not log.handlers and total:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=what, unit=f" {unit}", leave=False)

    def __enter__(self) -> Progress:
        log.info("%s: %s %s to do", self.what, f"{self.total:,}", self.unit)
        return self

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.last = now
            log.info("%s", self.line(now))

    def line(self, now: float | None = None) -> str:
        elapsed = (now or time.monotonic()) - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        share = f" ({self.done / self.total:.0%})" if self.total else ""
        counts = f"{self.done:,}/{self.total:,} {self.unit}{share}"
        return f"{self.what}: {counts}, {rate:,.1f} {self.unit}/s, {elapsed:,.0f} s"

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.bar is not None:
            self.bar.close()
        if kind is None:
            log.info("%s done", self.line())


def shard_position(shard_name: str, shard_names: list[str]) -> str:
    """``shard-00003.parquet (4 of 12)``: which shard of how many a mapped task works on."""
    names = [n.removesuffix(".parquet") for n in shard_names]
    name = shard_name.removesuffix(".parquet")
    return f"{name} ({names.index(name) + 1} of {len(names)})" if name in names else name


def configure_cli_logging() -> None:
    """The CLI's progress lines on stderr (a terminal gets bars instead); Airflow tasks log through Airflow."""
    if not sys.stderr.isatty() and not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
