"""Human-verification intake → the cumulative gold set (paper §3.2 step 1).

Inbox exports: Label Studio JSON export of the pairwise project (``labelstudio/pairwise.xml``),
and JSONL/CSV/Parquet in our schema or TRL form, with or without the five attribute columns (missing
ones are generated at intake and marked ``attributes_status: generated``), and ``human_label`` ∈
{chosen, rejected, undecidable}. ``chosen``: the stored chosen response is
better; ``rejected``: it is worse (the pair is flipped); ``undecidable``: discarded, reason kept.

Which verdict counts (``resolve``), the history keeping every verdict:
- a later round's verdicts on a pair replace the earlier rounds' (a re-review);
- within a round, each annotator's latest verdict counts once; when annotators disagree the majority
  label wins, and a tie makes the pair undecidable. Either way the conflict is recorded with who said
  what (``human_conflicts``).
Every malformed task, record or file becomes a quarantine row with its reason; nothing aborts the round.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from synpref.io.readers import FILE_LEVEL, InputError, RecordError, iter_raw, normalize, quarantine_row, scan_inputs
from synpref.io.storage import PathLike, as_path
from synpref.schema import ATTRIBUTE_FIELDS, PAIR_SCHEMA, QUARANTINE_SCHEMA, flip, has_attributes
from synpref.seeding import seeded_int

HUMAN_LABELS = ("chosen", "rejected", "undecidable")
HISTORY_SCHEMA = (
    PAIR_SCHEMA.append(pa.field("human_label", pa.string()))
    .append(pa.field("annotator", pa.string()))
    .append(pa.field("verified_at", pa.string()))
    .append(pa.field("inbox_file", pa.string()))
    .append(pa.field("seq", pa.int64()))
    .append(pa.field("attributes_status", pa.string()))  # human | generated | attributes_missing (null: older rows)
)
DISCARDED_SCHEMA = HISTORY_SCHEMA.append(pa.field("reason", pa.string()))
CONFLICT_SCHEMA = pa.schema([("pair_id", pa.string()), ("round", pa.string()), ("resolution", pa.string())])


@dataclass
class Intake:
    verifications: list[dict]  # HISTORY_SCHEMA rows (this inbox only)
    quarantine: list[dict]


def _ls_value(item: dict) -> Any:
    v = item.get("value")
    if not isinstance(v, dict):
        raise RecordError("Label Studio result without a 'value' object")
    for key in ("choices", "text"):
        if v.get(key):
            if not isinstance(v[key], list):
                raise RecordError(f"Label Studio result value '{key}' must be a list")
            return v[key][0] if len(v[key]) == 1 else v[key]
    return None


def _stored_orientation(data: dict, verdict: Any) -> tuple[Any, Any, Any]:
    """(stored chosen, stored rejected, human_label) of a task.

    Tasks show the two responses as A and B in a seeded random order (``a_is``: which stored side A is,
    never shown to the verifier), so the verdict "A"/"B" is mapped back to the stored label here. Tasks of
    the earlier layout (``response_chosen``/``response_rejected``, verdict ``chosen``/``rejected``) still read.
    """
    if "response_a" not in data:
        return data.get("response_chosen"), data.get("response_rejected"), verdict
    a_is = data.get("a_is")
    if a_is not in ("chosen", "rejected"):
        raise RecordError(f"Label Studio task: 'a_is' must be 'chosen' or 'rejected', got {a_is!r}")
    a, b = data.get("response_a"), data.get("response_b")
    chosen, rejected = (a, b) if a_is == "chosen" else (b, a)
    if verdict in ("A", "B"):
        picked_stored_chosen = (verdict == "A") == (a_is == "chosen")
        return chosen, rejected, "chosen" if picked_stored_chosen else "rejected"
    return chosen, rejected, verdict


def a_is_chosen(pair_id: str, seed: int = 0) -> bool:
    """The seeded coin that orders a pair for humans: True → the stored chosen response is shown as A."""
    return seeded_int("human-order", seed, pair_id) % 2 == 0


def is_label_studio_task(raw: Any) -> bool:
    return isinstance(raw, dict) and "annotations" in raw and "data" in raw


def _from_label_studio(task: dict) -> list[dict]:
    """One Label Studio task → raw verification dicts (one per non-cancelled annotation)."""
    data, annotations = task.get("data"), task.get("annotations")
    if not isinstance(data, dict):
        raise RecordError(f"Label Studio task 'data' must be an object, got {type(data).__name__}")
    if not isinstance(annotations, list):
        raise RecordError(f"Label Studio task 'annotations' must be a list, got {type(annotations).__name__}")
    out = []
    for i, ann in enumerate(annotations):
        if not isinstance(ann, dict):
            raise RecordError(f"Label Studio annotation {i} must be an object, got {type(ann).__name__}")
        if ann.get("was_cancelled"):
            continue
        results = ann.get("result")
        if not isinstance(results, list) or not all(isinstance(r, dict) for r in results):
            raise RecordError(f"Label Studio annotation {i}: 'result' must be a list of objects")
        fields = {r.get("from_name"): _ls_value(r) for r in results}
        chosen, rejected, label = _stored_orientation(data, fields.get("verdict"))
        raw = {
            "pair_id": data.get("pair_id"),
            "conversation": data.get("conversation"),
            "prompt": data.get("prompt"),
            "chosen": chosen,
            "rejected": rejected,
            "flipped": data.get("flipped", False),
            "source": data.get("source") or "label_studio",
            "human_label": label,
            "annotator": str(ann.get("completed_by", "")),
            "verified_at": str(ann.get("updated_at") or ann.get("created_at") or ""),
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


def _verification(raw: Any, inbox_file: str, seq: int) -> dict:
    if not isinstance(raw, dict):
        raise RecordError(f"a verification must be an object, got {type(raw).__name__}")
    label = raw.get("human_label")
    if label not in HUMAN_LABELS:
        raise RecordError(f"human_label must be one of {HUMAN_LABELS}, got {label!r}")
    given_id = raw.get("pair_id")
    rec = normalize(  # a malformed attribute is dropped (then generated at intake), never the verification
        {k: v for k, v in raw.items() if k not in ("human_label", "annotator", "verified_at", "pair_id")}, "inbox", []
    )
    if given_id and given_id != rec.pair_id:
        raise RecordError(f"pair_id {given_id} does not match the pair's content ({rec.pair_id})")
    row = rec.model_dump()
    return {
        **row,
        # attributes given with the verification, or to be generated at intake (LLM proposes, humans verify later)
        "attributes_status": "human" if has_attributes(row) else None,
        "provenance": "human",
        "human_label": label,
        "annotator": str(raw.get("annotator") or ""),
        "verified_at": str(raw.get("verified_at") or ""),
        "inbox_file": inbox_file,
        "seq": seq,
    }


def read_inbox(inbox: PathLike) -> Intake:
    """Every export file under the inbox directory (missing or empty directory = nothing verified).

    Files that cannot be read, records that are not verifications and files of other types become
    quarantine rows; a Label Studio task is recognised per record (``data`` + ``annotations``)."""
    verifications, quarantine = [], []
    if not as_path(inbox).exists():
        return Intake([], [])
    try:
        scan = scan_inputs(inbox)
    except InputError:
        return Intake([], [])
    for skipped in scan.skipped:
        quarantine.append(quarantine_row(skipped["path"], FILE_LEVEL, f"skipped: {skipped['reason']}", ""))
    for f in scan.files:
        for index, raw, error in iter_raw(f):
            if error:
                quarantine.append(quarantine_row(f, index, error, raw))
                continue
            try:
                found = [
                    _verification(r, f, 0) for r in (_from_label_studio(raw) if is_label_studio_task(raw) else [raw])
                ]
            except RecordError as e:
                quarantine.append(quarantine_row(f, index, str(e), raw))
                continue
            except (ValueError, TypeError) as e:
                quarantine.append(quarantine_row(f, index, f"unreadable verification: {type(e).__name__}", raw))
                continue
            verifications += [{**v, "seq": len(verifications) + i} for i, v in enumerate(found)]
    return Intake(verifications, quarantine)


def _order(row: dict) -> tuple:
    return (row.get("round") or "", row.get("verified_at") or "", row.get("seq") or 0)


def resolve(history: list[dict]) -> tuple[dict[str, dict], list[dict]]:
    """The verdict that counts per pair, and the conflicts (see the module docstring for the rule)."""
    by_pair: dict[str, list[dict]] = defaultdict(list)
    for row in sorted(history, key=_order):
        by_pair[row["pair_id"]].append(row)
    final, conflicts = {}, []
    for pid, rows in by_pair.items():
        latest_round = rows[-1].get("round") or ""
        current = {(r.get("annotator") or ""): r for r in rows if (r.get("round") or "") == latest_round}
        labels = Counter(r["human_label"] for r in current.values())
        if len(labels) == 1:
            final[pid] = rows[-1]
            continue
        (top, n_top), (_, n_next) = labels.most_common(2)
        said = ", ".join(f"{a or 'unnamed'}: {r['human_label']}" for a, r in sorted(current.items()))
        if n_top > n_next:
            final[pid] = [r for r in rows if r["human_label"] == top][-1]
            resolution = f"annotators disagree ({said}); majority: {top}"
        else:
            final[pid] = {**rows[-1], "human_label": "undecidable"}
            resolution = f"annotators disagree ({said}); no majority: undecidable"
        final[pid]["conflict"] = resolution
        conflicts.append({"pair_id": pid, "round": latest_round, "resolution": resolution})
    return final, conflicts


def oriented(verification: dict) -> dict:
    """A verified pair as a gold row: flipped when the human said the stored chosen is worse."""
    row = {k: verification.get(k) for k in PAIR_SCHEMA.names}
    return flip(row) if verification["human_label"] == "rejected" else row


def is_validation(pair_id: str, fraction: float = 0.2) -> bool:
    """Deterministic gold split by pair_id hash (stable across rounds and machines)."""
    return seeded_int(pair_id) / 0xFFFFFFFF < fraction


def build_gold(history: list[dict], validation_fraction: float = 0.2) -> dict[str, list[dict]]:
    """gold (all verified), gold_train / gold_validation (for the gold RM only), discarded."""
    final, conflicts = resolve(history)
    gold, discarded = [], []
    for pid in sorted(final):
        v = final[pid]
        if v["human_label"] == "undecidable":
            discarded.append({**v, "reason": v.get("conflict") or "human marked the pair undecidable"})
        else:
            gold.append(oriented(v))
    return {
        "gold": gold,
        "gold_train": [g for g in gold if not is_validation(g["pair_id"], validation_fraction)],
        "gold_validation": [g for g in gold if is_validation(g["pair_id"], validation_fraction)],
        "discarded": discarded,
        "human_conflicts": sorted(conflicts, key=lambda c: c["pair_id"]),
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
    out = {k: pa.Table.from_pylist(parts[k], schema=PAIR_SCHEMA) for k in ("gold", "gold_train", "gold_validation")}
    out["discarded"] = pa.Table.from_pylist(parts["discarded"], schema=DISCARDED_SCHEMA)
    out["human_conflicts"] = pa.Table.from_pylist(parts["human_conflicts"], schema=CONFLICT_SCHEMA)
    out["human_verifications"] = pa.Table.from_pylist(history, schema=HISTORY_SCHEMA)
    out["intake_quarantine"] = quarantine_table(quarantine)
    return out


def quarantine_table(quarantine: list[dict]) -> pa.Table:
    """The inbox records intake rejected, each with its reason (``intake_quarantine.parquet``)."""
    return pa.Table.from_pylist(quarantine, schema=QUARANTINE_SCHEMA)


def label_studio_tasks(rows: list[dict], seed: int = 0) -> list[dict]:
    """Review-queue rows → Label Studio tasks (fields of ``labelstudio/pairwise.xml``): the two responses as
    A and B in a seeded random order, without saying which one is stored as chosen (``a_is`` maps it back)."""
    tasks = []
    for i, r in enumerate(rows):
        first = a_is_chosen(r["pair_id"], seed)
        a, b = (r["chosen"], r["rejected"]) if first else (r["rejected"], r["chosen"])
        data = {
            "pair_id": r["pair_id"],
            "round": r.get("round"),
            "conversation": r["conversation"],
            "response_a": a,
            "response_b": b,
            "a_is": "chosen" if first else "rejected",
            "flipped": bool(r.get("flipped")),
            "source": r.get("source"),
            **{f: r.get(f) for f in ATTRIBUTE_FIELDS},
            "queue_reason": r.get("queue_reason"),
        }
        tasks.append({"id": i + 1, "data": data})
    return tasks


def dumps_tasks(rows: list[dict], seed: int = 0) -> str:
    return json.dumps(label_studio_tasks(rows, seed), indent=1, ensure_ascii=False)
