"""The paper's LLM judge: a binary CORRECT/INCORRECT verdict on (question, gold answers, prediction).

Why strict: the verdict is a reward (GRPO) and a promotion score, so a reply that is not exactly
one of the two labels must never be read as CORRECT. :func:`parse_verdict` accepts the label alone
(markdown, quotes, a ``Verdict:`` prefix and a full stop allowed); INCORRECT and negations ("not
correct") are checked first; anything else is unreadable. An unreadable reply or a failed request
is asked once more, then becomes ``Verdict(correct=False, error=True)`` — counted by the caller
(:mod:`components.agent.judging`), never raised.

The prompt is a versioned template (``prompts/judge/<version>.txt``; v2 carries InfoSeek's numeric
range); verdicts are cached by content hash in the tool-server's SQLite cache (:mod:`components.search.cache`;
in memory, or in a file when a path is given), so a re-run does not pay twice. The HTTP client is made per event loop, so one judge serves many
``asyncio.run`` calls (GRPO's reward function runs one per step).

    judge = LLMJudge(settings.judge, cache_path=".dmms/judge.db")
    verdict = await judge.ajudge("When was it built?", ["1889"], "in 1889")
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
from importlib import resources
from pathlib import Path

from components.agent.judges import Verdict
from components.common import retry
from components.common.llm import ChatClient, LLMError
from components.common.settings import LLMEndpointSettings
from components.search.cache import SQLiteCache

log = logging.getLogger(__name__)
DEFAULT_PROMPT_VERSION = "v2"
_LABEL = re.compile(r"^(?:verdict|answer|grade|label)?\s*:?\s*(correct|incorrect)$")
_NEGATION = re.compile(r"\b(not|no|isnt|wrong|false|never)\b")


def judge_prompt(question: str, golds: list[str], prediction: str, version: str = DEFAULT_PROMPT_VERSION,
                 answer_range: tuple[float, float] | None = None) -> str:
    path = resources.files("components.agent").joinpath(f"prompts/judge/{version}.txt")
    if not path.is_file():
        raise ValueError(f"judge prompt {version!r} not found: set DMMS_JUDGE__PROMPT_VERSION to v1 or v2")
    template = path.read_text(encoding="utf-8")
    values = {"question": question, "golds": "; ".join(golds), "prediction": prediction or "(empty)"}
    if "{range_line}" in template:
        values["range_line"] = (f"\nAccepted numeric range: {answer_range[0]:g} to {answer_range[1]:g}"
                                if answer_range else "")
    return template.format(**values)


def parse_verdict(text: str) -> bool | None:
    """CORRECT → True, INCORRECT (or a negated CORRECT) → False, anything else → None.

    >>> parse_verdict("CORRECT"), parse_verdict(" **Incorrect.**"), parse_verdict("Not correct")
    (True, False, False)
    >>> parse_verdict("maybe"), parse_verdict("The prediction is correct."), parse_verdict("")
    (None, None, None)
    """
    t = text.strip().lower().replace("'", "").replace("’", "")
    t = re.sub(r"[*_`\"“”.!\s]+", " ", t).strip()
    if not t:
        return None
    if "incorrect" in t.split() or ("correct" in t and _NEGATION.search(t)):
        return False
    m = _LABEL.match(t)
    return (m.group(1) == "correct") if m else None


class _Unreadable(Exception):
    """The judge's reply names no verdict."""


class LLMJudge:
    """The paper's binary judge through an OpenAI-compatible endpoint: strict, cached, never raising."""

    attempts = 2  # the first ask, and once more when the reply is unreadable (the chat client retries
    # the network per the shared policy: a request that failed for good is not asked again here)

    def __init__(self, endpoint: LLMEndpointSettings, cache_path: str | Path | None = None,
                 prompt_version: str = DEFAULT_PROMPT_VERSION, client: ChatClient | None = None):
        self.endpoint = endpoint
        self.prompt_version = prompt_version
        self.model = endpoint.model or endpoint.base_url or ""
        self.name = f"llm:{self.model}"
        self._fixed_client = client
        self._clients: dict[int, ChatClient] = {}
        # verdicts never expire: the same (judge, prompt, question, golds, prediction) is the same verdict
        self._cache = SQLiteCache(cache_path if cache_path is not None else ":memory:", ttl_s=0,
                                  max_entries=10_000_000, write_behind=False)
        judge_prompt("q", ["a"], "p", prompt_version)  # an unknown prompt version fails here, not per item

    def _client(self) -> ChatClient:
        if self._fixed_client is not None:
            return self._fixed_client
        loop = id(asyncio.get_running_loop())
        if loop not in self._clients:
            self._clients[loop] = ChatClient(self.endpoint)
        return self._clients[loop]

    def _key(self, question: str, golds: list[str], prediction: str, answer_range) -> str:
        blob = json.dumps([self.name, self.prompt_version, question, golds, prediction, answer_range])
        return hashlib.sha256(blob.encode()).hexdigest()

    async def ajudge(self, question: str, golds: list[str], prediction: str | None,
                     answer_range: tuple[float, float] | None = None) -> Verdict:
        prediction = prediction or ""
        if not prediction.strip():
            return Verdict(False, self.name, "empty answer")
        key = self._key(question, golds, prediction, list(answer_range) if answer_range else None)
        cached = await self._cache.get(key)
        if cached is not None:
            return Verdict(cached == "1", self.name, "cached")
        prompt = judge_prompt(question, golds, prediction, self.prompt_version, answer_range)

        async def ask() -> tuple[bool, str]:
            result = await self._client().complete([{"role": "user", "content": prompt}],
                                                   max_tokens=8, temperature=0.0)
            verdict = parse_verdict(result.text)
            if verdict is None:  # asked once more (the shared policy, no wait); the network is the client's
                raise retry.Retryable(_Unreadable(f"unreadable verdict {result.text[:60]!r}"))
            return verdict, result.text.strip()[:40]

        try:
            verdict, said = await retry.attempts(ask, name=f"judge {self.name}", retries=self.attempts - 1,
                                                 wait_initial=0.0)
        except (LLMError, _Unreadable) as exc:
            problem = str(exc) if isinstance(exc, _Unreadable) else f"request failed: {exc}"
            log.warning("judge %s failed (%s): scored INCORRECT", self.name, problem)
            return Verdict(False, self.name, f"judge error: {problem}", error=True)
        await self._cache.set(key, "1" if verdict else "0")
        return Verdict(verdict, self.name, said)

    async def aclose(self) -> None:
        """Close the HTTP client of the running event loop (the judge stays usable)."""
        try:
            loop = id(asyncio.get_running_loop())
        except RuntimeError:
            return
        client = self._clients.pop(loop, None)
        if client is not None:
            await client.aclose()
