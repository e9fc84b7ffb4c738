"""``backend: replay`` — verdicts a team already has, used as a judge.

Teams often hold GPT-4 judgments or reward-model scores of their pairs. A replay annotator answers each judge
request from such a recording instead of asking a model, so it is measured on the gold probe like any judge, weighs
by what the probe shows, and makes ablations on real judges reproducible offline. Its ``base_url`` is the
recording's path or URI (JSONL, JSON or Parquet), one row per judged pair and order:

- ``prompt``: the conversation, a string (the user's turn) or a list of ``{role, content}`` messages (its last user
  turn is the key);
- ``response_a``, ``response_b``: the two responses in the order the judge saw them (A = Candidate 1);
- the judgment: ``verdict`` (``A`` / ``B`` / ``tie``; also ``1`` / ``2`` / ``0``), or ``score_a`` and ``score_b``
  (a reward model's scores: the higher wins, equal is a tie).

A request is answered from the row of the same prompt and the same two responses in the same order. A judge that is
order-sensitive (most LLM judges) is recorded in both orders; where only the other order was recorded, its verdict
is mirrored (exact for reward models, which are order-invariant) and counted. A tie, or a pair not recorded at all,
is answered without a verdict: an abstention, never a coin flip. Answers are deterministic, as a judge at
temperature 0 or a reward model is: the ``n`` choices of a request are the same verdict.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from typing import Any

import pyarrow.parquet as pq

from synpref.io.storage import as_path
from synpref.llm.client import AnnotatorConfig, AnnotatorError, ChatRequest, Completion
from synpref.llm.prompt import prompt_parts

log = logging.getLogger(__name__)
NOT_RECORDED = "This pair is not in the recorded judgments: no verdict."
TIE = "The recorded judgment is a tie: no verdict."
_VERDICTS = {"a": 1, "1": 1, "b": 2, "2": 2, "tie": 0, "0": 0, "c": 0, "draw": 0}


def _key(prompt: str, first: str, second: str) -> str:
    return hashlib.sha256(json.dumps([prompt.strip(), first.strip(), second.strip()]).encode()).hexdigest()


def _user_turn(prompt: Any) -> str | None:
    """The key text of a recorded ``prompt``: itself, or the last user message of a message list."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list):
        users = [m.get("content") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
        return users[-1] if users and isinstance(users[-1], str) else None
    return None


def _slot(row: dict) -> int | None:
    """1 / 2 (the response the recording prefers, A = 1) or 0 (a tie); None for a row without a judgment."""
    verdict = row.get("verdict")
    if verdict is not None:
        return _VERDICTS.get(str(verdict).strip().lower())
    a, b = row.get("score_a"), row.get("score_b")
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return 1 if a > b else 2 if b > a else 0
    return None


def read_recording(uri: str) -> list[dict]:
    """The rows of a recording (JSONL, a JSON list, or Parquet)."""
    path = as_path(uri)
    if not path.exists():
        raise AnnotatorError(f"replay recording not found: {uri}")
    if str(uri).endswith(".parquet"):
        with path.open("rb") as f:
            return pq.read_table(f).to_pylist()
    text = path.read_text()
    try:
        if text.lstrip().startswith("["):
            return json.loads(text)
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    except ValueError as e:
        raise AnnotatorError(f"replay recording {uri}: not JSON lines: {e}") from None


class ReplayBackend:
    """Answers judge requests from a recording of judgments (see the module docstring)."""

    def __init__(self, cfg: AnnotatorConfig) -> None:
        self.cfg, self.verdicts, self.counts = cfg, {}, Counter()
        unusable = 0
        for row in read_recording(cfg.base_url):
            prompt, slot = _user_turn(row.get("prompt")), _slot(row)
            a, b = row.get("response_a"), row.get("response_b")
            if prompt is None or slot is None or not isinstance(a, str) or not isinstance(b, str):
                unusable += 1
                continue
            self.verdicts[_key(prompt, a, b)] = slot
        if not self.verdicts:
            raise AnnotatorError(
                f"annotator '{cfg.name}': no usable row in the replay recording {cfg.base_url} "
                "(each needs prompt, response_a, response_b and verdict, or score_a and score_b)"
            )
        if unusable:
            log.warning("annotator %s: %d rows of %s have no usable judgment", cfg.name, unusable, cfg.base_url)

    def _answer(self, prompt: str) -> str:
        parts = prompt_parts(prompt)
        if parts is None:
            self.counts["not_a_judge_prompt"] += 1
            return NOT_RECORDED
        named = dict(parts[1])
        users = [text for name, text in parts[1] if name == "turn user"]
        if not users or not {"candidate_1", "candidate_2"} <= set(named):
            self.counts["not_recorded"] += 1
            return NOT_RECORDED
        first, second = named["candidate_1"], named["candidate_2"]
        slot = self.verdicts.get(_key(users[-1], first, second))
        if slot is None and (mirrored := self.verdicts.get(_key(users[-1], second, first))) is not None:
            self.counts["mirrored"] += 1
            slot = {1: 2, 2: 1, 0: 0}[mirrored]
        if slot is None:
            self.counts["not_recorded"] += 1
            return NOT_RECORDED
        self.counts["tie" if slot == 0 else "answered"] += 1
        return TIE if slot == 0 else f"Recorded judgment: Candidate {slot} is better.\n[[{slot}]]"

    async def complete(self, request: ChatRequest) -> Completion:
        prompt = next((c for r, c in reversed(request.messages) if r == "user"), "")
        text = self._answer(prompt)
        return Completion(text, usage_reported=False, more_texts=(text,) * (request.n - 1))

    async def aclose(self) -> None:
        if self.counts:
            log.info(
                "annotator %s (replay of %s): %s", self.cfg.name, self.cfg.base_url, dict(sorted(self.counts.items()))
            )
