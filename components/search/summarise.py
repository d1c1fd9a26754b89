"""Summaries of search results, focused on the query (docs/design.md §1: image 4–5 sentences, text 10–12).

Two real implementations, chosen by settings and named in the logs:
- :class:`LLMSummariser` — any OpenAI-compatible chat endpoint (``DMMS_TOOLS__SUMMARISER__BASE_URL``),
  prompts from ``components/search/prompts/*_v1.txt``;
- :class:`ExtractiveSummariser` — no model: the sentences of the result pages that best match the
  query (BM25-weighted term overlap), deduplicated, grouped under their page titles.

    summariser = make_summariser(settings)
    await summariser.summarise_text(query, hits, pages)
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from pathlib import Path
from string import Template

from components.common.settings import Settings
from components.search.errors import UpstreamError
from components.search.text_index import words
from components.search.types import ImageHit, TextHit

log = logging.getLogger(__name__)

PROMPTS = Path(__file__).parent / "prompts"
PROMPT_VERSION = "v1"
TEXT_SENTENCES = 10
IMAGE_SENTENCES = 5
PAGE_CHARS = 4000  # of each page in an LLM prompt
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")


def load_prompt(kind: str, version: str = PROMPT_VERSION) -> Template:
    path = PROMPTS / f"{kind}_summary_{version}.txt"
    return Template(path.read_text(encoding="utf-8"))


def _render_results(hits: list[TextHit] | list[ImageHit], pages: list[str]) -> str:
    blocks = []
    for i, (hit, page) in enumerate(zip(hits, pages, strict=True), 1):
        caption = f"\nCaption: {hit.snippet}" if isinstance(hit, ImageHit) and hit.snippet else ""
        blocks.append(f"[{i}] {hit.title}\nURL: {hit.url or '-'}{caption}\n{page[:PAGE_CHARS]}")
    return "\n\n".join(blocks)


class ExtractiveSummariser:
    """Best sentences by relevance to the query; no model, no network."""

    name = "extractive"

    async def summarise_text(self, query: str, hits: list[TextHit], pages: list[str]) -> str:
        return extractive_summary(query, [h.title for h in hits], pages, TEXT_SENTENCES)

    async def summarise_image(self, hits: list[ImageHit], pages: list[str]) -> str:
        if not hits:
            return "The image search found no matching images."
        # No question reaches an image search: the best matches' titles and captions are the focus.
        focus = " ".join(f"{h.title} {h.snippet}" for h in hits[:2])
        lead = f"The image most likely shows {hits[0].title}."
        body = extractive_summary(focus, [h.title for h in hits], pages, IMAGE_SENTENCES - 1)
        return f"{lead} {body}".strip()

    async def aclose(self) -> None:
        return None


def extractive_summary(query: str, titles: list[str], pages: list[str], n_sentences: int) -> str:
    """Top ``n_sentences`` sentences of ``pages`` by BM25-weighted overlap with ``query``, in page
    order, near-duplicates dropped, each page's sentences prefixed with its title."""
    candidates: list[tuple[int, int, str, set[str]]] = []  # (page, position, sentence, terms)
    for p, page in enumerate(pages):
        for i, sentence in enumerate(s.strip() for s in _SENTENCE.split(page or "")):
            if len(sentence) >= 3:
                candidates.append((p, i, sentence, set(words(sentence))))
    if not candidates:
        return "The search found no relevant information." if not titles else (
            "The search found: " + "; ".join(t for t in titles if t) + ".")
    df = Counter(t for *_, terms in candidates for t in terms)
    n = len(candidates)
    q_terms = set(words(query))

    def score(item: tuple[int, int, str, set[str]]) -> float:
        page, pos, _, terms = item
        overlap = sum(math.log(1 + (n - df[t] + 0.5) / (df[t] + 0.5)) for t in q_terms & terms)
        return overlap - 0.01 * page - 0.001 * pos  # ties: earlier pages, earlier sentences

    chosen: list[tuple[int, int, str, set[str]]] = []
    for item in sorted(candidates, key=score, reverse=True):
        if any(_jaccard(item[3], c[3]) > 0.8 for c in chosen):
            continue
        chosen.append(item)
        if len(chosen) == n_sentences:
            break
    chosen.sort(key=lambda c: (c[0], c[1]))
    parts: list[str] = []
    last_page = -1
    for page, _, sentence, _ in chosen:
        if page != last_page and page < len(titles) and titles[page]:
            parts.append(f"{titles[page]}: {sentence}")
        else:
            parts.append(sentence)
        last_page = page
    return " ".join(parts)


def _jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a and b else 0.0


class LLMSummariser:
    """Summaries from an OpenAI-compatible chat endpoint; failures raise :class:`UpstreamError`."""

    def __init__(self, settings: Settings):
        from components.common.llm import ChatClient

        endpoint = settings.tools.summariser
        self.name = f"llm:{endpoint.model or endpoint.base_url}"
        self._client = ChatClient(endpoint)
        self._text = load_prompt("text")
        self._image = load_prompt("image")

    async def _ask(self, prompt: str) -> str:
        from components.common.llm import LLMError

        try:
            result = await self._client.complete([{"role": "user", "content": prompt}])
        except LLMError as exc:
            raise UpstreamError(f"summariser failed: {exc}", code="summariser_error") from None
        text = result.text.strip()
        if not text:
            raise UpstreamError("summariser returned an empty summary", code="summariser_error")
        return text

    async def summarise_text(self, query: str, hits: list[TextHit], pages: list[str]) -> str:
        if not hits:
            return f"The text search for {query!r} found no results."
        return await self._ask(self._text.substitute(query=query, results=_render_results(hits, pages)))

    async def summarise_image(self, hits: list[ImageHit], pages: list[str]) -> str:
        if not hits:
            return "The image search found no matching images."
        return await self._ask(self._image.substitute(results=_render_results(hits, pages)))

    async def aclose(self) -> None:
        await self._client.aclose()


def make_summariser(settings: Settings) -> ExtractiveSummariser | LLMSummariser:
    if settings.tools.summariser.configured:
        summariser: ExtractiveSummariser | LLMSummariser = LLMSummariser(settings)
    else:
        summariser = ExtractiveSummariser()
    log.info("summariser: %s%s", summariser.name,
             "" if settings.tools.summariser.configured
             else " (no DMMS_TOOLS__SUMMARISER__BASE_URL set: best sentences by relevance, no model)")
    return summariser
