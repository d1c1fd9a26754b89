"""Answer judges: is a prediction the gold answer? Datagen filters, GRPO rewards and evaluation
all ask this question, so it is answered here once.

- :class:`RuleJudge` — no model: normalised exact / alias match (case, punctuation, articles,
  whitespace), the gold contained as a whole phrase in a short prediction ("in 1889" for
  "1889"), and numeric tolerance (relative, default 0; years compared exactly). Deterministic
  and free: the default for the offline world and the tiny profile.
- :class:`LLMJudge` — the paper's binary CORRECT/INCORRECT verdict from any OpenAI-compatible
  endpoint (``settings.judge``), prompt in ``prompts/judge/v1.txt``, verdicts cached in memory
  and optionally in a SQLite file so a re-run of an evaluation does not pay twice.

Both return a :class:`Verdict` that records which judge decided, so stored results say how
they were judged.

    judge = RuleJudge()
    judge.judge("When was it built?", ["1889"], "It was completed in 1889.").correct  # True
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import sqlite3
import string
import threading
import unicodedata
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from components.common.llm import ChatClient, LLMError
from components.common.settings import LLMEndpointSettings

log = logging.getLogger(__name__)

GIVE_UP_MARKERS = ("unable to answer", "lack of relevant information")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_NUMBER = re.compile(r"^[-+]?\d+(?:[.,]\d+)*(?:\.\d+)?$")


@dataclass(frozen=True)
class Verdict:
    correct: bool
    judge: str
    detail: str = ""


def normalise(text: str) -> str:
    """Lowercase, strip accents, punctuation, articles and extra whitespace.

    >>> normalise("  The Eiffel-Tower! ")
    'eiffel tower'
    """
    text = unicodedata.normalize("NFKD", text)
    text = "".join(ch for ch in text if not unicodedata.combining(ch)).lower()
    text = "".join(" " if ch in string.punctuation and ch not in ".," else ch for ch in text)
    text = re.sub(r"(?<!\d)[.,]|[.,](?!\d)", " ", text)  # keep 3.5 and 1,000; drop sentence marks
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _as_number(text: str) -> float | None:
    t = normalise(text).replace(",", "")
    if _NUMBER.match(t):
        try:
            return float(t)
        except ValueError:
            return None
    return None


class RuleJudge:
    """Normalised alias match with phrase containment and numeric tolerance."""

    name = "rule"

    def __init__(self, rel_tol: float = 0.0, max_extra_words: int = 12):
        self.rel_tol = rel_tol
        self.max_extra_words = max_extra_words

    def judge(self, question: str, golds: list[str], prediction: str | None) -> Verdict:
        pred = normalise(prediction or "")
        if not pred or any(m in pred for m in GIVE_UP_MARKERS):
            return Verdict(False, self.name, "empty or give-up answer")
        pred_words = pred.split()
        for gold in golds:
            g = normalise(gold)
            if not g:
                continue
            if pred == g:
                return Verdict(True, self.name, f"exact match {gold!r}")
            gnum, pnum = _as_number(g), _as_number(pred)
            if gnum is not None and pnum is not None and self._close(gnum, pnum):
                return Verdict(True, self.name, f"numeric match {gold!r}")
            if len(pred_words) <= len(g.split()) + self.max_extra_words and _contains_phrase(pred, g):
                numbers = [w for w in pred_words if _as_number(w) is not None]
                if gnum is not None and any(not self._close(gnum, _as_number(w)) for w in numbers):
                    continue  # "1887 or 1889" hedges between numbers
                return Verdict(True, self.name, f"contains {gold!r}")
        return Verdict(False, self.name, "no gold answer matched")

    def _close(self, a: float, b: float) -> bool:
        if self.rel_tol == 0.0:
            return a == b
        return abs(a - b) <= self.rel_tol * max(abs(a), abs(b))


def _contains_phrase(text: str, phrase: str) -> bool:
    return re.search(rf"(?<![\w.]){re.escape(phrase)}(?![\w]|\.\d)", text) is not None


def judge_prompt(question: str, golds: list[str], prediction: str, version: str = "v1") -> str:
    template = resources.files("components.agent").joinpath(f"prompts/judge/{version}.txt").read_text()
    return template.format(question=question, golds="; ".join(golds), prediction=prediction or "(empty)")


def parse_verdict(text: str) -> bool | None:
    """CORRECT → True, INCORRECT → False, anything else → None.

    >>> parse_verdict("CORRECT"), parse_verdict(" incorrect."), parse_verdict("maybe")
    (True, False, None)
    """
    words = re.findall(r"[A-Za-z]+", text.upper())
    if not words:
        return None
    if words[0] == "INCORRECT" or ("INCORRECT" in words and "CORRECT" not in words):
        return False
    if words[0] == "CORRECT" or "CORRECT" in words:
        return True
    return None


class _VerdictCache:
    """Verdicts by content hash: in memory, plus a SQLite file when a path is given."""

    def __init__(self, path: str | Path | None):
        self._mem: dict[str, bool] = {}
        self._lock = threading.Lock()
        self._db = None
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(path), check_same_thread=False)
            self._db.execute("CREATE TABLE IF NOT EXISTS verdicts (key TEXT PRIMARY KEY, correct INTEGER)")
            self._db.commit()

    def get(self, key: str) -> bool | None:
        with self._lock:
            if key in self._mem:
                return self._mem[key]
            if self._db is not None:
                row = self._db.execute("SELECT correct FROM verdicts WHERE key=?", (key,)).fetchone()
                if row is not None:
                    self._mem[key] = bool(row[0])
                    return bool(row[0])
        return None

    def put(self, key: str, value: bool) -> None:
        with self._lock:
            self._mem[key] = value
            if self._db is not None:
                self._db.execute("INSERT OR REPLACE INTO verdicts VALUES (?, ?)", (key, int(value)))
                self._db.commit()


class LLMJudge:
    """The paper's binary judge through an OpenAI-compatible endpoint, cached."""

    def __init__(self, endpoint: LLMEndpointSettings, cache_path: str | Path | None = None,
                 prompt_version: str = "v1", client: ChatClient | None = None):
        self.endpoint = endpoint
        self.prompt_version = prompt_version
        self.name = f"llm:{endpoint.model or endpoint.base_url}"
        self._client = client or ChatClient(endpoint)
        self._cache = _VerdictCache(cache_path)

    def _key(self, question: str, golds: list[str], prediction: str) -> str:
        blob = json.dumps([self.name, self.prompt_version, question, golds, prediction])
        return hashlib.sha256(blob.encode()).hexdigest()

    async def ajudge(self, question: str, golds: list[str], prediction: str | None) -> Verdict:
        prediction = prediction or ""
        if not prediction.strip():
            return Verdict(False, self.name, "empty answer")
        key = self._key(question, golds, prediction)
        cached = self._cache.get(key)
        if cached is not None:
            return Verdict(cached, self.name, "cached")
        prompt = judge_prompt(question, golds, prediction, self.prompt_version)
        result = await self._client.complete([{"role": "user", "content": prompt}],
                                             max_tokens=4, temperature=0.0)
        verdict = parse_verdict(result.text)
        if verdict is None:
            raise LLMError(f"judge {self.name} answered neither CORRECT nor INCORRECT: {result.text[:80]!r}")
        self._cache.put(key, verdict)
        return Verdict(verdict, self.name, result.text.strip()[:40])

    async def aclose(self) -> None:
        await self._client.aclose()
