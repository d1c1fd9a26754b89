"""Teachers of datagen — the generator backends that run THROUGH the agent loop — and the taxonomy.

Why: DeepMMSearchVQA is made by a strong teacher running the live tools (the paper: Gemini-2.5-Pro).
Two teachers, both real generator backends of :mod:`components.agent.loop`:

- ``llm``: any OpenAI-compatible vision model at ``settings.teacher`` (``DMMS_TEACHER__BASE_URL``,
  ``__MODEL``, ``__API_KEY``), prompted with the protocol's prompt (the loop's ``openai`` backend);
  a one-request probe first, so an unreachable endpoint stops the run before any work;
- ``oracle``: the scripted expert over the offline world (:mod:`components.datagen.oracle`).

Questions with no category get one from the teacher endpoint through a small classification prompt
(``prompts/taxonomy_v1.txt``); with no endpoint configured they are ``uncategorised``.

    gen = await make_teacher(settings, "oracle", items, Path("world/vqa/train"))
"""

from __future__ import annotations

import asyncio
import logging
from importlib import resources
from pathlib import Path
from typing import Any

from components.agent.vqa import VQAItem
from components.common.llm import ChatClient, LLMError
from components.common.settings import Settings, env_name
from components.datagen.oracle import OracleError, OracleGenerator, load_world

log = logging.getLogger(__name__)

TEACHERS = ("oracle", "llm")
UNCATEGORISED = "uncategorised"
# The taxonomy offered to the classifier: the offline world's categories plus InfoSeek-style ones.
DEFAULT_TAXONOMY = ("landmark/architecture", "nature/species", "art", "organisation", "people",
                    "visual/colour", "visual/count", "visual/shape", "visual/position",
                    "geography", "science/technology", "sports", "food", "vehicles",
                    "products/brands", "history/events", "entertainment", "other")


class TeacherError(ValueError):
    """The teacher cannot run; the message says what to change."""


def world_path(settings: Settings, seed_vqa: Path) -> Path:
    """The oracle's world.json: ``settings.datagen.world`` or the one above ``OUT/vqa/<split>``."""
    if settings.datagen.world:
        return Path(settings.datagen.world)
    folder = Path(seed_vqa)
    folder = folder.parent if folder.suffix == ".jsonl" else folder
    for parent in (folder, *folder.parents[:3]):
        if (parent / "world.json").is_file():
            return parent / "world.json"
    raise TeacherError(f"no world.json above {seed_vqa}: the oracle teacher runs on the offline world "
                       f"(dmms world make); set {env_name('datagen', 'world')} or use --teacher llm")


async def probe_endpoint(settings: Settings) -> None:
    """One tiny request to the teacher endpoint; :class:`TeacherError` if it does not answer."""
    t = settings.teacher
    if not t.configured:
        raise TeacherError(f"the llm teacher needs an OpenAI-compatible endpoint: set "
                           f"{env_name('teacher', 'base_url')} (and {env_name('teacher', 'model')})")
    try:
        async with ChatClient(t) as client:
            await client.complete([{"role": "user", "content": "Reply with OK."}], max_tokens=4, temperature=0.0)
    except LLMError as exc:
        raise TeacherError(f"teacher endpoint {t.base_url} does not answer ({exc}); check "
                           f"{env_name('teacher', 'base_url')} and {env_name('teacher', 'api_key')}") from None


async def make_teacher(settings: Settings, teacher: str, items: list[VQAItem], seed_root: Path,
                       probe: bool = True) -> Any:
    """The generator backend of ``teacher`` (``oracle`` or ``llm``), checked and ready (``probe=False``:
    skip the one-request probe, as a resumed run does: it has already seen the endpoint answer)."""
    if teacher == "oracle":
        try:
            world = load_world(world_path(settings, seed_root))
            return OracleGenerator(world, items, seed_root, requeries=settings.datagen.oracle_requeries,
                                   summary_answers=settings.datagen.oracle_summary_answers,
                                   quote=settings.datagen.oracle_quote)
        except OracleError as exc:
            raise TeacherError(str(exc)) from None
    if teacher == "llm":
        from components.agent.generators.openai import OpenAIGenerator

        if probe:
            await probe_endpoint(settings)
        log.info("teacher: %s at %s", settings.teacher.model or "(default model)", settings.teacher.base_url)
        return OpenAIGenerator(settings.teacher, concurrency=settings.datagen.concurrency)
    raise TeacherError(f"unknown teacher {teacher!r}: use one of {', '.join(TEACHERS)}")


def taxonomy_prompt(question: str, answer: str, categories: tuple[str, ...] = DEFAULT_TAXONOMY,
                    version: str = "v1") -> str:
    path = resources.files("components.datagen").joinpath(f"prompts/taxonomy_{version}.txt")
    if not path.is_file():
        raise TeacherError(f"taxonomy prompt {version!r} not found: set "
                           f"{env_name('datagen', 'taxonomy_prompt_version')} to an existing version")
    return path.read_text(encoding="utf-8").format(
        categories="\n".join(f"- {c}" for c in categories), question=question, answer=answer)


def parse_category(text: str, categories: tuple[str, ...] = DEFAULT_TAXONOMY) -> str:
    """The category named in a classifier reply, else ``other``.

    >>> parse_category(" Nature/Species."), parse_category("I think it's food"), parse_category("?")
    ('nature/species', 'food', 'other')
    """
    reply = text.strip().strip(".").casefold()
    for c in categories:
        if reply == c:
            return c
    hits = [c for c in categories if c in reply]
    return max(hits, key=len) if hits else "other"


async def assign_categories(settings: Settings, items: list[VQAItem]) -> dict[str, str]:
    """Category of every item: its own, or the teacher endpoint's classification, or uncategorised."""
    out = {i.id: i.category for i in items if i.category}
    todo = [i for i in items if not i.category]
    if not todo:
        return out
    if not settings.teacher.configured:
        log.warning("%d samples have no category and no teacher endpoint is configured (%s): "
                    "they are '%s'", len(todo), env_name("teacher", "base_url"), UNCATEGORISED)
        return {**out, **{i.id: UNCATEGORISED for i in todo}}
    version = settings.datagen.taxonomy_prompt_version
    sem = asyncio.Semaphore(settings.datagen.concurrency)
    async with ChatClient(settings.teacher) as client:
        async def one(item: VQAItem) -> tuple[str, str]:
            prompt = taxonomy_prompt(item.question, item.answers[0], version=version)
            async with sem:
                try:
                    result = await client.complete([{"role": "user", "content": prompt}], max_tokens=16,
                                                   temperature=0.0)
                except LLMError as exc:
                    log.warning("category of %s: classification failed (%s): 'other'", item.id, exc)
                    return item.id, "other"
            return item.id, parse_category(result.text)

        pairs = await asyncio.gather(*(one(i) for i in todo))
    return {**out, **dict(pairs)}
