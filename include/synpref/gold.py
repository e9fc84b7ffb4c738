"""Human-verification intake → the cumulative gold set (paper §3.2 step 1).

Inbox exports: Label Studio JSON export of the pairwise project (``labelstudio/pairwise.xml``),
and JSONL/CSV/Parquet in our schema or TRL conversational form with the five attribute columns
and ``human_label`` ∈ {chosen, rejected, undecidable}. ``chosen``: the stored chosen response is
better; ``rejected``: it is worse (the pair is flipped); ``undecidable``: discarded, reason kept.
A later verdict on the same pair supersedes an earlier one; the history keeps every verdict.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from .readers import RecordError, input_files, iter_raw, normalize, quarantine_row
from .schema import ATTRIBUTE_FIELDS, PAIR_SCHEMA, QUARANTINE_SCHEMA, flip
from .storage import PathLike, as_path

HUMAN_LABELS = ("chosen", "rejected", "undecidable")
HISTORY_SCHEMA = (
    PAIR_SCHEMA.append(pa.field("human_label", pa.string()))
    .append(pa.field("annotator", pa.string()))
    .append(pa.field("verified_at", pa.string()))
    .append(pa.field("inbox_file", pa.string()))
    .append(pa.field("seq", pa.int64()))
)
DISCARDED_SCHEMA = HISTORY_SCHEMA.append(pa.field("reason", pa.string()))


@dataclass
class Intake:
    verifications: list[dict]  # HISTORY_SCHEMA rows (this inbox only)
    quarantine: list[dict]


def _ls_value(item: dict) -> Any:
    v = item.get("value", {})
    for key in ("choices", "text"):
        if key in v and v[key]:
            return v[key][0] if len(v[key]) == 1 else v[key]
    return None


def _from_label_studio(task: dict) -> list[dict]:
    """One Label Studio task → raw verification dicts (one per non-cancelled annotation)."""
    if not isinstance(task, dict) or "data" not in task:
        raise RecordError("Label Studio task without 'data'")
    data = task["data"]
    out = []
    for ann in task.get("annotations") or []:
        if ann.get("was_cancelled"):
            continue
        fields = {r.get("from_name"): _ls_value(r) for r in ann.get("result", [])}
        raw = {
            "pair_id": data.get("pair_id"),
            "conversation": data.get("conversation"),
            "prompt": data.get("prompt"),
            "chosen": data.get("response_chosen"),
            "rejected": data.get("response_rejected"),
            "flipped": bool(data.get("flipped", False)),
            "source": data.get("source") or "label_studio",
            "human_label": fields.get("verdict"),
            "annotator": str(ann.get("completed_by", "")),
            "verified_at": ann.get("updated_at") or ann.get("created_at") or "",
        }
        for f in ATTRIBUTE_FIELDS:
            value = fields.get(f) if fields.get(f) not in (None, "") else data.get(f)
            if f == "desired_attributes" and isinstance(value, str):
                value = [x.strip() for x in value.split(",") if x.strip()]
            raw[f] = value
        out.append(raw)
    if not out:
        raise RecordError("Label Studio task has no completed annotation")
    return out


def _verification(raw: dict, inbox_file: str, seq: int) -> dict:
    label = raw.get("human_label")
    if label not in HUMAN_LABELS:
        raise RecordError(f"human_label must be one of {HUMAN_LABELS}, got {label!r}")
    given_id = raw.get("pair_id")
    rec = normalize(
        {k: v for k, v in raw.items() if k not in ("human_label", "annotator", "verified_at", "pair_id")}, "inbox"
    )
    if given_id and given_id != rec.pair_id:
        raise RecordError(f"pair_id {given_id} does not match the pair's content ({rec.pair_id})")
    if label != "undecidable":
        missing = [f for f in ATTRIBUTE_FIELDS if getattr(rec, f) in (None, "", [])]
        if missing:
            raise RecordError(f"verified pair lacks preference attributes: {', '.join(missing)}")
    row = rec.model_dump()
    return {
        **row,
        "provenance": "human",
        "human_label": label,
        "annotator": str(raw.get("annotator") or ""),
        "verified_at": str(raw.get("verified_at") or ""),
        "inbox_file": inbox_file,
        "seq": seq,
    }


def read_inbox(inbox: PathLike) -> Intake:
    """Every export file under the inbox directory (missing directory = nothing verified)."""
    verifications, quarantine = [], []
    if not as_path(inbox).exists():
        return Intake([], [])
    for f in input_files(inbox):
        is_ls = (
            f.endswith(".json")
            and as_path(f).read_text().lstrip().startswith("[")
            and '"annotations"' in as_path(f).read_text()
        )
        for index, raw, error in iter_raw(f):
            if error:
                quarantine.append(quarantine_row(f, index, error, raw))
                continue
            try:
                raws = _from_label_studio(raw) if is_ls else [raw]
                for r in raws:
                    verifications.append(_verification(r, f, len(verifications)))
            except RecordError as e:
                quarantine.append(quarantine_row(f, index, str(e), raw))
    return Intake(verifications, quarantine)


def supersede(history: list[dict]) -> dict[str, dict]:
    """Final verdict per pair: the latest by (round, verified_at, seq)."""
    final: dict[str, dict] = {}
    for row in sorted(history, key=lambda r: (r.get("round") or "", r.get("verified_at") or "", r.get("seq") or 0)):
        final[row["pair_id"]] = row
    return final


def oriented(verification: dict) -> dict:
    """A verified pair as a gold row: flipped when the human said the stored chosen is worse."""
    row = {k: verification[k] for k in PAIR_SCHEMA.names}
    return flip(row) if verification["human_label"] == "rejected" else row


def is_validation(pair_id: str, fraction: float = 0.2) -> bool:
    """Deterministic gold split by pair_id hash (stable across rounds and machines)."""
    return int(hashlib.sha256(pair_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < fraction


def build_gold(history: list[dict], validation_fraction: float = 0.2) -> dict[str, list[dict]]:
    """gold (all verified), gold_train / gold_validation (for the gold RM only), discarded."""
    final = supersede(history)
    gold, discarded = [], []
    for pid in sorted(final):
        v = final[pid]
        if v["human_label"] == "undecidable":
            discarded.append({**v, "reason": "human marked the pair undecidable"})
        else:
            gold.append(oriented(v))
    return {
        "gold": gold,
        "gold_train": [g for g in gold if not is_validation(g["pair_id"], validation_fraction)],
        "gold_validation": [g for g in gold if is_validation(g["pair_id"], validation_fraction)],
        "discarded": discarded,
    }


def seed_history(seed_gold: list[dict]) -> list[dict]:
    """Seed gold pairs (already human-verified) as history rows of round ``0000-seed``."""
    return [
        {
            **{k: r.get(k) for k in PAIR_SCHEMA.names},
            "provenance": "human",
            "round": "0000-seed",
            "human_label": "chosen",
            "annotator": "seed",
            "verified_at": "",
            "inbox_file": "seed",
            "seq": i,
        }
        for i, r in enumerate(seed_gold)
    ]


def tables(parts: dict[str, list[dict]], history: list[dict], quarantine: list[dict]) -> dict[str, pa.Table]:
    out = {k: pa.Table.from_pylist(v, schema=PAIR_SCHEMA) for k, v in parts.items() if k != "discarded"}
    out["discarded"] = pa.Table.from_pylist(parts["discarded"], schema=DISCARDED_SCHEMA)
    out["human_verifications"] = pa.Table.from_pylist(history, schema=HISTORY_SCHEMA)
    out["intake_quarantine"] = pa.Table.from_pylist(quarantine, schema=QUARANTINE_SCHEMA)
    return out


def label_studio_tasks(rows: list[dict]) -> list[dict]:
    """Review-queue rows → Label Studio import tasks (data fields match labelstudio/pairwise.xml)."""
    return [
        {
            "id": i + 1,
            "data": {
                "pair_id": r["pair_id"],
                "conversation": r["conversation"],
                "response_chosen": r["chosen"],
                "response_rejected": r["rejected"],
                "flipped": bool(r.get("flipped")),
                "source": r.get("source"),
                **{f: r.get(f) for f in ATTRIBUTE_FIELDS},
                "queue_reason": r.get("queue_reason"),
            },
        }
        for i, r in enumerate(rows)
    ]


def dumps_tasks(rows: list[dict]) -> str:
    return json.dumps(label_studio_tasks(rows), indent=1, ensure_ascii=False)
