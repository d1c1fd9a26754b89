"""The oracle teacher: a scripted expert over the offline world, run THROUGH the agent loop.

Why: datagen must run, be tested and be reproducible with no hosted model. The oracle knows each
question's gold metadata from ``world.json`` (gold entity, hop chain, fact asked, crop box) and
plans the trajectory a good model would take — but it answers only from what the tools RETURNED:

- search-free question: it reads the answer off the pixels (as a strong VLM would) and answers
  without searching;
- search-required: one image search (a crop, by box or by region phrase, when the question is
  about one region of a scene; else the whole image; a box in the frame the prompt states, as a
  model sees the image — components/agent/frame.py); it picks the entity among the names the
  search returned (the gold one if it is there — an expert recognises it — else the top guess);
  then text searches along the hop chain (a one-hop fact the image search's summary already states
  is answered from it, unless ``summary_answers`` is off: then it always searches the text), each fact extracted from the returned summary with the
  page's phrasing; a result that misses the fact is re-queried with another query; when the
  re-queries run out it gives up. The gold answer is never read, so it can be wrong, and wrong
  trajectories are filtered out like any teacher's.

It is a generator backend (:class:`components.agent.generators.base.Generator`): it sees the
conversation so far and emits the next protocol turn, stateless between calls.

    gen = OracleGenerator(load_world(Path("world/world.json")), items, Path("world/vqa/train"))
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from components.agent.frame import Frame, stated_size
from components.agent.generators.base import GenOutput, GenRequest
from components.agent.protocol import (
    GIVE_UP_ANSWER,
    IMAGE_KINDS,
    Action,
    ActionKind,
    parse_turn,
    render_action,
)
from components.agent.vqa import VQAItem

log = logging.getLogger(__name__)

_NAME = r"([A-Z][\w'’-]+(?: [A-Z][\w'’-]+){0,4})"
_NUM = r"(\d+(?:\.\d+)?)"
_YEAR = r"(\d{3,4})"
# fact key -> patterns over ONE entity's section of a returned summary (the world pages' phrasing)
FACT_PATTERNS: dict[str, list[str]] = {
    "completed_year": [rf"[Cc]ompleted(?: in|:) {_YEAR}"],
    "city": [rf"Location: {_NAME}", rf"Headquarters: {_NAME}", rf"in the city of {_NAME}"],
    "height_m": [rf"Height: {_NUM} m", rf"is {_NUM} metres tall"],
    "architect": [rf"Architect: {_NAME}", rf"designed by the architect {_NAME}"],
    "discovered_year": [rf"Described: {_YEAR}", rf"first described in {_YEAR}"],
    "habitat": [r"Habitat: ([^.]+)\.", r"found in ([^.]+)\."],
    "length_cm": [rf"Length: {_NUM} cm", rf"length of {_NUM} cm"],
    "naturalist": [rf"Discovered by: {_NAME}", rf"by the naturalist {_NAME}"],
    "year": [rf"Year: {_YEAR}", rf"made in {_YEAR}"],
    "painter": [rf"Artist: {_NAME}", rf"a painting by {_NAME}"],
    "medium": [r"Medium: ([^.]+)\.", r"made in \d+ \(([^)]+)\)"],
    "founded_year": [rf"Founded: {_YEAR}", rf"founded in {_YEAR}"],
    "founder": [rf"Founder: {_NAME}", rf"founded in \d+ by {_NAME}"],
    "members": [r"Members: (\d+)", r"It has (\d+) members"],
    "born_year": [rf"Born: [^,.]+, {_YEAR}", rf"was born in {_YEAR}", rf"\({_YEAR}[–-]"],
    "birth_city": [r"Born: ([^,.]+),", rf"born in \d+ in the city of {_NAME}"],
    "occupation": [r"was an? ([a-z][a-z ]*?)\."],
}
# fact key -> words a person would add to the entity's name in a text query
FACT_WORDS = {"completed_year": "completed year", "city": "city location", "height_m": "height metres",
              "architect": "architect", "discovered_year": "first described year", "habitat": "habitat",
              "length_cm": "length cm", "naturalist": "naturalist described by", "year": "painting year",
              "painter": "painted by artist", "medium": "medium", "founded_year": "founded year",
              "founder": "founder", "members": "members", "born_year": "born year",
              "birth_city": "born city birthplace", "occupation": "occupation"}
_UNITS = {"height_m": "{} metres", "length_cm": "{} cm"}
_VISUAL_PREFIX = "visual/"
_QUESTION = re.compile(r"^Question: (.*)$", re.MULTILINE)
_SUBJECT = re.compile(r"\b(the \w+ (?:on the \w+|in the [\w ]+?)) of this image")


class OracleError(ValueError):
    """The oracle cannot run on this seed data; the message says what to change."""


@dataclass(frozen=True)
class Gold:
    """What the oracle knows about one question (from world.json), never the answer itself."""

    id: str
    question: str
    requires_search: bool
    category: str
    entity_name: str | None
    chain: tuple[str, ...]  # facts to look up in turn: ("architect", "birth_city")
    region: str | None
    crop_box: tuple[float, ...] | None


@dataclass
class World:
    """The parts of world.json the oracle plans from."""

    names: list[str]  # every entity name: where sections of a returned summary begin
    gold: dict[str, Gold]


def load_world(path: Path) -> World:
    """Read ``world.json`` (written by ``dmms world make``)."""
    path = Path(path)
    if not path.is_file():
        raise OracleError(f"{path} not found: the oracle teacher needs the offline world's world.json "
                          "(set DMMS_DATAGEN__WORLD, or use --teacher llm for other seed data)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        names = {e["id"]: e["name"] for e in data["entities"]}
        gold = {q["id"]: _gold(q, names) for q in data["questions"]}
    except (ValueError, KeyError, TypeError) as exc:
        raise OracleError(f"{path} is not a world.json made by `dmms world make`: {exc!r}") from None
    return World(names=sorted(set(names.values()), key=len, reverse=True), gold=gold)


def _gold(q: dict[str, Any], names: dict[str, str]) -> Gold:
    fact = q.get("fact") or ""
    chain = tuple(p.lstrip("@") for p in fact.split(".")) if fact else ()
    box = q.get("crop_box")
    return Gold(id=q["id"], question=q["question"], requires_search=bool(q["requires_search"]),
                category=q["category"], entity_name=names.get(q.get("entity") or ""), chain=chain,
                region=q.get("region"), crop_box=tuple(box) if box else None)


def pixel_key(image: Image.Image) -> str:
    """A digest of an image's pixels (the same for the file and for the loop's decoded copy)."""
    rgb = image.convert("RGB")
    return hashlib.sha256(f"{rgb.size}".encode() + rgb.tobytes()).hexdigest()


def extract(text: str, subject: str, fact: str, names: list[str]) -> str | None:
    """The value of ``fact`` stated in ``subject``'s section of a returned summary, or None."""
    found = extract_quoted(text, subject, fact, names)
    return found[0] if found is not None else None


def extract_quoted(text: str, subject: str, fact: str, names: list[str]) -> tuple[str, str] | None:
    """(value, the page's own words that state it, e.g. ``"Born: Deigleicha, 1853"``) of ``fact`` in
    ``subject``'s section of a returned summary, or None."""
    for section in sections(text, subject, names):
        for pattern in FACT_PATTERNS[fact]:
            m = re.search(pattern, section)
            if m:
                return m.group(1).strip(), m.group(0).strip().rstrip(" ,.")
    return None


def sections(text: str, subject: str, names: list[str]) -> list[str]:
    """The parts of ``text`` headed ``"<subject>: "`` up to the next entity's header."""
    out = []
    for m in re.finditer(re.escape(subject) + r": ", text):
        rest = text[m.end():]
        ends = [rest.find(f"{n}: ") for n in names if n != subject]
        ends = [e for e in ends if e >= 0]
        out.append(rest[: min(ends)] if ends else rest)
    return out


def candidates(text: str, names: list[str]) -> list[str]:
    """Entity names mentioned in ``text``, in order of first mention (longest names first on ties)."""
    found = {}
    for n in names:
        i = text.find(n)
        if i >= 0 and not any(i >= j and i < j + len(o) for o, j in found.items()):
            found[n] = i
    return sorted(found, key=found.get)


def _visual_answer(category: str, image: Image.Image) -> str:
    from components.world.visual import analyse  # the pixels, read as a strong VLM reads them

    return analyse(image)[category.removeprefix(_VISUAL_PREFIX)]


def plan_turn(gold: Gold, image: Image.Image, history: list[tuple[Action, str]], names: list[str],
              requeries: int = 2, summary_answers: bool = True, frame: Frame | None = None,
              quote: bool = False) -> Action:
    """The next action given the previous ones and the information each got back; a crop box is
    written in ``frame`` (the size the prompt states) when given, else in original pixels."""
    if not gold.requires_search:
        if not gold.category.startswith(_VISUAL_PREFIX):
            return _answer("I cannot work this out from the image alone and have no plan.", GIVE_UP_ANSWER)
        value = _visual_answer(gold.category, image)
        return _answer(f"The question is about what the image shows, so no search is needed: "
                       f"looking at the shapes, the answer is {value}.", value)
    image_info = next((info for a, info in history if a.kind in IMAGE_KINDS), None)
    if image_info is None:
        return _image_search(gold, frame)
    found = candidates(image_info, names)
    if not found:
        return _answer("The image search found nothing I can name, and I cannot search the image again.",
                       GIVE_UP_ANSWER)
    subject = gold.entity_name if gold.entity_name in found else found[0]
    texts = [(a.query or "", info) for a, info in history if a.kind == ActionKind.TEXT_SEARCH]
    return _follow_chain(gold, subject, image_info, texts, names, requeries, summary_answers, quote)


def _follow_chain(gold: Gold, subject: str, image_info: str, texts: list[tuple[str, str]],
                  names: list[str], requeries: int, summary_answers: bool = True,
                  quote: bool = False) -> Action:
    stage, misses, found = 0, 0, None
    if len(gold.chain) == 1 and summary_answers:  # the image search's own summary may already state the fact
        found = extract_quoted(image_info, subject, gold.chain[0], names)
    for _, info in texts:
        if found is not None:
            break
        got = extract_quoted(info, subject, gold.chain[stage], names)
        if got is None:
            misses += 1
        elif stage == len(gold.chain) - 1:
            found = got
        else:
            subject, stage, misses = got[0], stage + 1, 0
    if found is not None:
        fact, (value, words) = gold.chain[-1], found
        answer = _UNITS.get(fact, "{}").format(value)
        if quote:  # the value after the same words as in the page: copying it is continuing a copy
            return _answer(f"The search results on {subject} state: {words}.", answer)
        return _answer(f"The search results state the {FACT_WORDS[fact]} of {subject}: {value}.", answer)
    if misses > requeries:
        return _answer(f"My searches did not state the {FACT_WORDS[gold.chain[stage]]} of {subject}.",
                       GIVE_UP_ANSWER)
    fact = gold.chain[stage]
    query = [f"{subject} {FACT_WORDS[fact]}", subject, f"{FACT_WORDS[fact]} of {subject}"][misses % 3]
    why = ("The image shows " + subject + "; now I need its " if stage == 0 and misses == 0
           else "That result did not state it; I search again for the " if misses else
           f"That gives {subject}; now I need the ")
    return Action(kind=ActionKind.TEXT_SEARCH, reason=f"{why}{FACT_WORDS[fact]}.", query=query)


def _image_search(gold: Gold, frame: Frame | None = None) -> Action:
    if gold.crop_box is None and gold.region is None:
        return Action(kind=ActionKind.IMAGE_SEARCH,
                      reason="I do not know what this image shows; I search with the whole image.")
    m = _SUBJECT.search(gold.question)
    use_box = gold.crop_box is not None and (m is None or int(gold.id.encode().hex(), 16) % 2 == 0)
    region: str | list[float] = m.group(1) if not use_box else (
        frame.from_pixels(gold.crop_box) if frame is not None else [float(v) for v in gold.crop_box])
    return Action(kind=ActionKind.CROP_SEARCH, region=region,
                  reason="The question is about one region of the image; I search a crop of that region.")


def _answer(reason: str, answer: str) -> Action:
    return Action(kind=ActionKind.ANSWER, reason=reason, answer=answer)


def _first_user_text(messages: list[dict[str, Any]]) -> str | None:
    first = next((m for m in messages if m["role"] == "user"), None)
    if first is None:
        return None
    content = first["content"]
    return content if isinstance(content, str) else "".join(c.get("text", "") for c in content
                                                            if c.get("type") == "text")


def _question_of(messages: list[dict[str, Any]]) -> str | None:
    m = _QUESTION.search(_first_user_text(messages) or "")
    return m.group(1).strip() if m else None


def _frame(messages: list[dict[str, Any]], image: Image.Image) -> Frame | None:
    """The frame the conversation's first user turn states (prompt versions v2/t2), as a model reads it."""
    size = stated_size(_first_user_text(messages) or "")
    return Frame(width=size[0], height=size[1], original=image.size) if size else None


def history_of(messages: list[dict[str, Any]]) -> list[tuple[Action, str]]:
    """(parsed model turn, the user turn that followed it) pairs of a conversation so far."""
    out: list[tuple[Action, str]] = []
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            nxt = messages[i + 1] if i + 1 < len(messages) else None
            info = nxt["content"] if nxt is not None and isinstance(nxt["content"], str) else ""
            out.append((parse_turn(m["content"]), info))
    return out


class OracleGenerator:
    """Generator backend that plays the oracle teacher (see module docstring)."""

    name = "oracle"
    processor = None
    tokenizer = None
    lockstep = False

    def __init__(self, world: World, items: list[VQAItem], root: Path, requeries: int = 2,
                 summary_answers: bool = True, quote: bool = False):
        self.world, self.requeries, self.summary_answers = world, requeries, summary_answers
        self.quote = quote
        self._gold: dict[tuple[str, str], Gold] = {}
        missing = [i.id for i in items if i.id not in world.gold]
        if missing:
            raise OracleError(f"{len(missing)} seed items are not questions of this world (e.g. "
                              f"{missing[:3]}): the oracle teacher runs only on the offline world's VQA "
                              "splits; use --teacher llm for other seed data")
        for item in items:
            with Image.open(Path(root) / item.image) as img:
                self._gold[(item.question.strip(), pixel_key(img))] = world.gold[item.id]

    async def generate(self, requests: list[GenRequest]) -> list[GenOutput]:
        return [self._one(r) for r in requests]

    def _one(self, request: GenRequest) -> GenOutput:
        messages = request.messages or []
        question = _question_of(messages)
        if not request.images or question is None:
            return GenOutput(text="", stop_reason="error", error="oracle: the request has no image or question")
        gold = self._gold.get((question, pixel_key(request.images[0])))
        if gold is None:
            return GenOutput(text="", stop_reason="error", error=f"oracle: unknown question {question[:80]!r}")
        action = plan_turn(gold, request.images[0], history_of(messages), self.world.names, self.requeries,
                            self.summary_answers, _frame(messages, request.images[0]), self.quote)
        text = render_action(action)
        return GenOutput(text=text, stop_reason="stop_string", stop=f"</{text.rsplit('</', 1)[1]}")

    async def aclose(self) -> None:
        return None
