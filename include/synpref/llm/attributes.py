"""LLM generation of the 5 preference attributes for unverified-pool pairs (paper §3.2).

The answer must be one JSON object valid against ``schema.Attributes``; an invalid answer gets
one retry (a new sample), then the pair is marked ``attributes_missing`` and continues.
"""

from __future__ import annotations

import json
import re

import pyarrow as pa
from pydantic import ValidationError

from synpref.io.storage import PathLike
from synpref.llm.annotation import _jinja, request_seed, template
from synpref.llm.client import AnnotatorConfig, Budget, Request, run_requests
from synpref.llm.prompt import block, boundary_marker, marker_line
from synpref.schema import ATTRIBUTE_FIELDS, PAIR_SCHEMA, Attributes, has_attributes

ATTRIBUTE_STATUS_SCHEMA = PAIR_SCHEMA.append(pa.field("attributes_status", pa.string()))
_OBJECT = re.compile(r"\{.*\}", re.S)


def attribute_messages(pair: dict) -> tuple[tuple[str, str], ...]:
    texts = [pair["chosen"], pair["rejected"], *(m["content"] for m in pair["conversation"])]
    marker = boundary_marker(texts)
    blocks = [block(f"turn {m['role']}", m["content"], marker) for m in pair["conversation"]]
    blocks += [block("response_a", pair["chosen"], marker), block("response_b", pair["rejected"], marker)]
    user = _jinja("attributes_user.jinja").render(marker_line=marker_line(marker), pair="\n".join(blocks))
    return (("system", template("attributes_system.txt").strip()), ("user", user))


def parse_attributes(text: str | None) -> dict | None:
    """The first JSON object in ``text`` validated as Attributes, else None."""
    m = _OBJECT.search(text or "")
    if not m:
        return None
    try:
        return Attributes.model_validate(json.loads(m.group(0))).model_dump()
    except (json.JSONDecodeError, ValidationError, TypeError):
        return None


def generate_attributes(
    pairs: list[dict],
    annotator: AnnotatorConfig,
    cache_dir: PathLike | None,
    seed: int = 0,
    budget: Budget | None = None,
) -> tuple[pa.Table, dict]:
    """Fill missing attributes; rows that already have them are kept as they are (status ``present``)."""
    todo = [p for p in pairs if not has_attributes(p)]
    result: dict[str, dict | None] = {}
    usage_total: dict = {}
    for attempt in range(2):  # the answer, then one retry for invalid answers
        pending = [p for p in todo if result.get(p["pair_id"]) is None]
        if not pending:
            break
        reqs = [
            Request(
                p["pair_id"], attribute_messages(p), attempt, request_seed(p["pair_id"], "attributes", attempt, seed)
            )
            for p in pending
        ]
        cfg = annotator.model_copy(update={"temperature": 0.0 if attempt == 0 else 0.7})
        responses, usage = run_requests(cfg, reqs, cache_dir, budget)
        for k, v in usage.as_dict().items():
            if not isinstance(v, list):
                usage_total[k] = usage_total.get(k, 0) + v
        for p, r in zip(pending, responses):
            result[p["pair_id"]] = parse_attributes(r.text)
    rows = []
    for p in pairs:
        if has_attributes(p):
            rows.append({**p, "attributes_status": "present"})
        elif result.get(p["pair_id"]):
            rows.append({**p, **result[p["pair_id"]], "attributes_status": "generated"})
        else:
            rows.append({**p, **{f: None for f in ATTRIBUTE_FIELDS}, "attributes_status": "attributes_missing"})
    return pa.Table.from_pylist(rows, schema=ATTRIBUTE_STATUS_SCHEMA), {annotator.name: usage_total}
