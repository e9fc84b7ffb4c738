"""Reward models measured on public RM benchmarks: the paper's yardstick (an RM is better when it ranks the
chosen response of held-out preference pairs above the rejected one more often).

A benchmark is a file (or URI) of pairs in one of the formats below; its name is the file's stem:

- **RewardBench**: ``prompt``, ``chosen``, ``rejected``, ``subset`` (and ``id``). Where the subsets name
  RewardBench's, the section scores and the overall score are computed as RewardBench does: Chat, Chat Hard and
  Safety are the example-weighted means of their subsets, Reasoning weighs ``math-prm`` as much as the code
  subsets together, and the score is the mean of the sections present.
- **JudgeBench-style**: ``question``, ``response_A``, ``response_B``, ``label`` (``A>B`` or ``B>A``; a tie is
  skipped). A reward model scores each response on its own, so the candidates' order cannot matter to it:
  one order is scored.
- **Any pair format the readers take** (TRL prompt/chosen/rejected, conversational, HH-RLHF, ours), with an
  optional ``subset``.

An RM is right on a pair when r(chosen) > r(rejected). Accuracy comes with a 95% Wilson interval, per subset and
overall; two RMs on the same pairs are compared by a paired bootstrap of their difference.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from synpref.io.readers import FILE_LEVEL, InputError, RecordError, iter_raw, normalize_row
from synpref.io.storage import PathLike, as_path
from synpref.models.reliability import wilson_interval

SECTIONS = {  # RewardBench's sections and their subsets
    "Chat": ("alpacaeval-easy", "alpacaeval-length", "alpacaeval-hard", "mt-bench-easy", "mt-bench-med"),
    "Chat Hard": (
        "mt-bench-hard",
        "llmbar-natural",
        "llmbar-adver-neighbor",
        "llmbar-adver-GPTInst",
        "llmbar-adver-GPTOut",
        "llmbar-adver-manual",
    ),
    "Safety": (
        "refusals-dangerous",
        "refusals-offensive",
        "xstest-should-refuse",
        "xstest-should-respond",
        "donotanswer",
    ),
    "Reasoning": ("math-prm", "hep-cpp", "hep-go", "hep-java", "hep-js", "hep-python", "hep-rust"),
}
BOOTSTRAP = 1000
ALL = "all"  # the subset name of a benchmark without subsets


@dataclass(frozen=True)
class Benchmark:
    """A benchmark's pairs (pair rows as the readers make them, plus ``subset``) and the records it skipped."""

    name: str
    rows: list[dict]
    skipped: int


def _judgebench(raw: dict) -> dict | None:
    """A JudgeBench-style record as prompt/chosen/rejected; None for a tie."""
    label = str(raw.get("label", "")).replace(" ", "")
    if label.startswith("A>"):
        chosen, rejected = raw["response_A"], raw["response_B"]
    elif label.startswith("B>"):
        chosen, rejected = raw["response_B"], raw["response_A"]
    else:
        return None
    return {"prompt": raw["question"], "chosen": chosen, "rejected": rejected, "subset": raw.get("source")}


def load_benchmark(uri: PathLike) -> Benchmark:
    """The pairs of a benchmark file; records that are not pairs (a tie, a malformed record) are counted as
    skipped, a file that cannot be read or holds no pair is an ``InputError``."""
    path = as_path(uri)
    if not path.exists():
        raise InputError(f"RM benchmark not found: {uri}")
    rows, skipped = [], 0
    for index, raw, problem in iter_raw(path):
        if index == FILE_LEVEL:
            raise InputError(f"RM benchmark {uri}: {problem}")
        if problem or not isinstance(raw, dict):
            skipped += 1
            continue
        record = _judgebench(raw) if "response_A" in raw else raw
        try:
            row, _ = normalize_row({k: v for k, v in (record or {}).items() if k != "subset"}, path.stem)
        except (RecordError, KeyError, ValueError):
            skipped += 1
            continue
        rows.append({**row, "subset": str((record or {}).get("subset") or ALL)})
    if not rows:
        raise InputError(f"RM benchmark {uri}: no preference pair in it ({skipped} records skipped)")
    return Benchmark(path.stem, rows, skipped)


def _interval(right: np.ndarray) -> dict:
    low, high = wilson_interval(int(right.sum()), len(right))
    return {"accuracy": float(right.mean()), "ci_low": low, "ci_high": high, "pairs": len(right)}


def summarize(subsets: list[str], right: np.ndarray) -> dict:
    """Accuracy with its Wilson interval overall and per subset, and RewardBench's section scores and overall
    score where the subsets name its sections."""
    subsets_arr = np.array(subsets)
    per = {s: _interval(right[subsets_arr == s]) for s in sorted(set(subsets))}
    out = {"overall": _interval(right), "subsets": per}

    def weighted(names: list[str]) -> float:  # example-weighted mean of subsets
        return sum(per[n]["accuracy"] * per[n]["pairs"] for n in names) / sum(per[n]["pairs"] for n in names)

    sections = {}
    for section, names in SECTIONS.items():
        present = [n for n in names if n in per]
        if not present:
            continue
        code = [n for n in present if n != "math-prm"]
        if section == "Reasoning" and "math-prm" in present and code:
            sections[section] = (per["math-prm"]["accuracy"] + weighted(code)) / 2
        else:
            sections[section] = weighted(present)
    if sections:
        out["rewardbench"] = {"sections": sections, "score": sum(sections.values()) / len(sections)}
    return out


def paired_difference(before: np.ndarray, after: np.ndarray, seed: int = 0) -> dict:
    """``after`` − ``before`` accuracy on the same pairs, with a 95% paired-bootstrap interval."""
    before, after = before.astype(np.float64), after.astype(np.float64)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(after), size=(BOOTSTRAP, len(after)))
    diffs = (after[draws] - before[draws]).mean(axis=1)
    low, high = np.quantile(diffs, [0.025, 0.975])
    return {"difference": float(after.mean() - before.mean()), "ci_low": float(low), "ci_high": float(high)}
