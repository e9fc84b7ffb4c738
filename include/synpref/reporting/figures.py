"""The report's figures: one look (matplotlib, Agg), labelled axes, each figure → PNG bytes.

Each function takes plain numbers (gathered by ``synpref.reporting.report`` from manifests and per-shard
summaries), so a figure never reads data itself and renders in a fraction of a second.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {
    "kept": "#2e7d32",
    "recycled": "#1565c0",
    "dropped": "#c62828",
    "quarantined": "#6d4c41",
    "duplicates": "#8d6e63",
    "contaminated": "#ef6c00",
    "input": "#455a64",
    "best": "#1565c0",
    "gold": "#f9a825",
    "fixed": "#6a1b9a",
    "truth": "#000000",
    "silver": "#90a4ae",
    "review queue": "#ef6c00",
    "retrieved": "#1565c0",
    "tokens": "#546e7a",
    "cost": "#546e7a",
}
_STYLE = {
    "figure.figsize": (7.0, 3.6),
    "figure.dpi": 100,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.titlesize": 11,
    "axes.titleweight": "bold",
    "axes.labelsize": 9,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 8,
    "legend.frameon": False,
}


@contextmanager
def figure(title: str, xlabel: str, ylabel: str, size: tuple[float, float] | None = None) -> Iterator:
    """A styled figure with one axes; the caller draws, ``png`` renders."""
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=size or _STYLE["figure.figsize"])
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        try:
            yield fig, ax
        finally:
            plt.close(fig)


def png(fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", metadata={"Software": None})  # no timestamp: identical bytes on re-run
    return buf.getvalue()


def _interval(values: list[float | None], lows: list[float | None], highs: list[float | None]) -> list[list[float]]:
    """Error-bar lengths below and above each value, never negative (a value rounded outside its interval)."""
    lo = [max(0.0, v - (low if low is not None else v)) if v is not None else 0 for v, low in zip(values, lows)]
    hi = [max(0.0, (high if high is not None else v) - v) if v is not None else 0 for v, high in zip(values, highs)]
    return [lo, hi]


def accuracy_over_rounds(rounds: list[str], series: dict[str, dict[str, list]], title: str) -> bytes:
    """Lines with 95% intervals: ``series[name] = {"value": [...], "low": [...], "high": [...]}``."""
    with figure(title, "round", "accuracy on gold") as (fig, ax):
        x = list(range(len(rounds)))
        for i, (name, s) in enumerate(series.items()):
            shift = [v + (i - (len(series) - 1) / 2) * 0.06 for v in x]
            pts = [(xx, v, lo, hi) for xx, v, lo, hi in zip(shift, s["value"], s["low"], s["high"]) if v is not None]
            if not pts:
                continue
            xs, vs, los, his = map(list, zip(*pts))
            color = COLORS.get(s.get("color", ""), None)
            ax.errorbar(xs, vs, yerr=_interval(vs, los, his), marker="o", capsize=3, label=name, color=color)
        ax.set_xticks(x, rounds, rotation=30 if len(rounds) > 6 else 0)
        ax.set_xlim(-0.5, len(rounds) - 0.5)
        ax.set_ylim(0, 1.02)
        ax.legend(loc="lower right")
        return png(fig)


def per_category(rounds: list[str], categories: dict[str, list[float | None]], title: str) -> bytes:
    with figure(title, "round", "best-RM accuracy on gold") as (fig, ax):
        x = list(range(len(rounds)))
        names = sorted(categories)
        markers = "osD^v<>ph*"
        for i, name in enumerate(names):
            # categories often tie (several at 1.0): a small offset and a marker each keep every one visible
            shift = (i - (len(names) - 1) / 2) * min(0.08, 0.6 / max(1, len(names)))
            pts = [(xx + shift, v) for xx, v in zip(x, categories[name]) if v is not None]
            if pts:
                ax.plot(*zip(*pts), marker=markers[i % len(markers)], label=name, alpha=0.85)
        ax.set_xticks(x, rounds, rotation=30 if len(rounds) > 6 else 0)
        ax.set_xlim(-0.5, len(rounds) - 0.5)
        ax.set_ylim(0, 1.02)
        ax.legend(loc="lower right", ncol=2)
        return png(fig)


def sizes_over_rounds(rounds: list[str], sizes: dict[str, list[int]], title: str, ylabel: str = "pairs") -> bytes:
    """Grouped bars per round (gold / silver / review queue; tokens; cost)."""
    with figure(title, "round", ylabel) as (fig, ax):
        width = 0.8 / max(1, len(sizes))
        for i, (name, values) in enumerate(sizes.items()):
            xs = [r + (i - (len(sizes) - 1) / 2) * width for r in range(len(rounds))]
            ax.bar(xs, values, width=width, label=name, color=COLORS.get(name))
        ax.set_xticks(range(len(rounds)), rounds, rotation=30 if len(rounds) > 6 else 0)
        top = max((v for values in sizes.values() for v in values), default=0)
        ax.set_ylim(0, top * 1.08 if top > 0 else 1)  # an all-zero series (free judges) starts at 0, not -0.04
        if len(sizes) > 1:
            ax.legend()
        return png(fig)


def bars(labels: list[str], values: list[float], title: str, xlabel: str, ylabel: str, colors=None) -> bytes:
    with figure(title, xlabel, ylabel) as (fig, ax):
        ax.bar(range(len(labels)), values, color=colors)
        ax.set_xticks(range(len(labels)), labels)
        for i, v in enumerate(values):
            ax.annotate(
                f"{v:,.0f}" if float(v).is_integer() else f"{v:.2f}", (i, v), ha="center", va="bottom", fontsize=8
            )
        return png(fig)


def frontier(precisions: list[float], kept: list[int], recycled: list[int], target: float, title: str) -> bytes:
    """Pairs a run would keep and flip at each estimated precision; the run's target as a vertical line."""
    with figure(title, "estimated precision", "pairs") as (fig, ax):
        ax.plot(precisions, kept, marker="o", label="kept")
        ax.plot(precisions, recycled, marker="s", label="flipped (recycled)")
        ax.axvline(target, color="grey", linestyle="--", label=f"target {target:.2f}")
        ax.legend()
        return png(fig)


def judges(names: list[str], stats: dict[str, list], title: str) -> bytes:
    """Per annotator: accuracy on the blind gold probe (95% interval), abstention rate, position bias."""
    with figure(title, "annotator", "share") as (fig, ax):
        width = 0.26
        x = list(range(len(names)))
        acc = stats["accuracy"]
        ax.bar(
            [v - width for v in x],
            [a or 0 for a in acc],
            width,
            yerr=_interval(acc, stats["low"], stats["high"]),
            capsize=3,
            label="accuracy on gold probe",
            color=COLORS["kept"],
        )
        ax.bar(x, stats["abstention"], width, label="abstention rate", color=COLORS["quarantined"])
        ax.bar(
            [v + width for v in x], stats["position_bias"], width, label="position bias", color=COLORS["contaminated"]
        )
        ax.set_xticks(x, names)
        ax.set_ylim(0, 1.3)
        ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
        ax.legend(loc="upper center", ncol=3)
        return png(fig)


def funnel(stages: list[tuple[str, int]], title: str) -> bytes:
    """Horizontal bars: input, then where every pair went."""
    with figure(title, "pairs", "", size=(7.0, 0.45 * len(stages) + 1.2)) as (fig, ax):
        labels = [s[0] for s in stages][::-1]
        values = [s[1] for s in stages][::-1]
        ax.barh(labels, values, color=[COLORS.get(label, COLORS["input"]) for label in labels])
        top = max(values) if values else 1
        for i, v in enumerate(values):
            ax.annotate(f"{v:,}", (v + top * 0.01, i), va="center", fontsize=8)
        ax.set_xlim(0, top * 1.12 or 1)
        return png(fig)


def histogram_by_decision(edges: list[float], counts: dict[str, list[int]], title: str, xlabel: str) -> bytes:
    """Stacked histogram of a probability, coloured by the decision taken."""
    with figure(title, xlabel, "pairs") as (fig, ax):
        width = edges[1] - edges[0]
        bottom = [0] * (len(edges) - 1)
        for decision, values in counts.items():
            ax.bar(
                edges[:-1],
                values,
                width=width,
                align="edge",
                bottom=bottom,
                label=decision,
                color=COLORS.get(decision),
            )
            bottom = [b + v for b, v in zip(bottom, values)]
        ax.set_xlim(0, 1)
        ax.legend()
        return png(fig)


def stacked_categories(categories: list[str], counts: dict[str, list[int]], title: str) -> bytes:
    with figure(title, "task category", "pairs") as (fig, ax):
        bottom = [0] * len(categories)
        for decision, values in counts.items():
            ax.bar(categories, values, bottom=bottom, label=decision, color=COLORS.get(decision))
            bottom = [b + v for b, v in zip(bottom, values)]
        ax.tick_params(axis="x", rotation=20)
        ax.legend()
        return png(fig)


def estimates(names: list[str], est: list[dict], truth: list[float | None] | None, title: str) -> bytes:
    """Quality estimates from the blind canaries with 95% intervals; the truth beside them when known."""
    with figure(title, "", "share") as (fig, ax):
        x = list(range(len(names)))
        values = [e.get("estimate") for e in est]
        pts = [(i, v, e) for i, v, e in zip(x, values, est) if v is not None]
        if pts:
            xs, vs, es = zip(*pts)
            yerr = _interval(list(vs), [e.get("ci_low") for e in es], [e.get("ci_high") for e in es])
            ax.errorbar(xs, vs, yerr=yerr, fmt="o", capsize=4, label="estimate (canaries, 95% interval)")
        if truth:
            tp = [(i, t) for i, t in zip(x, truth) if t is not None]
            if tp:
                ax.plot(*zip(*tp), "kx", markersize=9, label="synthetic truth")
        ax.set_xticks(x, names)
        ax.set_xlim(-0.5, len(names) - 0.5)
        ax.set_ylim(0, 1.02)
        ax.legend(loc="lower right")
        return png(fig)


def message(title: str, text: str) -> bytes:
    """A figure that says why there is nothing to plot (so links to it never break)."""
    with figure(title, "", "", size=(7.0, 1.6)) as (fig, ax):
        ax.axis("off")
        ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=10, color="#555")
        return png(fig)
