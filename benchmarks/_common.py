"""Shared helpers of the benchmark scripts: interleaved repeats, min/median, peak RSS of a process tree,
and a table printer. Every script prints ratios measured side by side in one run (project vs baseline,
alternating, at least 3 repeats)."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def machine() -> str:
    """One line naming the machine the figures come from."""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown CPU")
    except OSError:
        cpu = "unknown CPU"
    return f"{cpu}, {len(os.sched_getaffinity(0))} cores, Python {platform.python_version()}"


def interleaved(runs: dict[str, Callable[[], dict]], repeats: int = 3) -> dict[str, list[dict]]:
    """Each named run ``repeats`` times, alternating (a, b, a, b, ...): drift hits both alike."""
    out: dict[str, list[dict]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            out[name].append(fn())
    return out


def summary(samples: list[dict], key: str) -> dict:
    values = [s[key] for s in samples]
    return {"min": min(values), "median": statistics.median(values)}


def peak_flops(device: str = "cpu", size: int = 2048, repeats: int = 10, bf16: bool = True) -> float:
    """Measured FLOP/s of a square ``size`` matmul on ``device`` in bf16 (else fp32): the median of ``repeats`` after
    3 warm-ups (synchronised on CUDA). The denominator of every "% of peak" / MFU figure, measured in the precision
    the benchmark computes in: a CPU without native bf16 emulates it (~0.3 GFLOP/s at 2048 on an AVX2 EPYC, one
    matmul ~50 s), and computes in fp32."""
    import torch

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    dtype = torch.bfloat16 if bf16 else torch.float32
    a, b = (torch.randn(size, size, dtype=dtype, device=device) for _ in range(2))
    times = []
    for i in range(repeats + 3):
        sync()
        start = time.perf_counter()
        a @ b
        sync()
        if i >= 3:
            times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times)


def timed(fn: Callable[[], object]) -> dict:
    start = time.perf_counter()
    result = fn()
    return {"s": time.perf_counter() - start, "result": result}


def _rss(process) -> int:
    """Resident bytes of a process, 0 once it has exited."""
    import psutil

    try:
        return process.memory_info().rss
    except psutil.Error:
        return 0


def in_subprocess(code: str, sample_s: float = 0.05) -> dict:
    """Run ``python -c code`` (it prints one JSON object last); add its wall time and the peak RSS of its
    whole process tree (sampled every ``sample_s``), in MB."""
    import psutil

    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    tree, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            children = tree.children(recursive=True)
        except psutil.Error:  # the process exited between poll() and here
            children = []
        peak = max(peak, sum(_rss(p) for p in [tree, *children]))
        time.sleep(sample_s)
    out = proc.stdout.read()
    if proc.returncode:
        raise RuntimeError(f"benchmark subprocess failed ({proc.returncode}): {out[-2000:]}")
    return {**json.loads(out.strip().splitlines()[-1]), "wall_s": time.perf_counter() - start, "peak_mb": peak / 2**20}


def table(title: str, header: list[str], rows: list[list]) -> str:
    """A Markdown table (printed, and saved under benchmarks/results/)."""
    fmt = lambda v: f"{v:,.2f}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) else str(v)  # noqa: E731
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def report(name: str, text: str) -> None:
    """Print and save ``benchmarks/results/<name>.md`` with the machine line."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    full = f"{text}\n\nMachine: {machine()}; {time.strftime('%Y-%m-%d')}\n"
    (RESULTS / f"{name}.md").write_text(full)
    print(full)
