"""Questions over the offline world: single-hop, multi-hop and crop (search-required) templates.

Why: the paper's data mixes questions that need an image search then a text search ("What year
was the landmark in this image completed?"), multi-hop ones ("…where was its architect born?")
and crop ones about one region of a busier picture ("…the building on the left…"). Each template
names the fact it asks for; the answer is that fact, with aliases ("1889", "in 1889"; a person's
full and short names), and the gold hop chain ends at the entity whose page states it.

Library module: ``entity_questions(entity, by_id, rng, subject)`` returns :class:`Draft` items.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from components.world.entities import Entity

# kind -> (noun for "the X in this image", noun inside a scene, [(template, fact key, answer type)])
# A fact key "@role" means the linked person's full name.
TEMPLATES: dict[str, tuple[str, str, list[tuple[str, str, str]]]] = {
    "landmark": ("landmark", "building", [
        ("In what year was {s} completed?", "completed_year", "year"),
        ("In which city is {s} located?", "city", "place"),
        ("How tall is {s}, in metres?", "height_m", "m"),
        ("Who was the architect of {s}?", "@architect", "person")]),
    "species": ("animal", "animal", [
        ("In what year was the species of {s} first described?", "discovered_year", "year"),
        ("In what kind of habitat is the species of {s} found?", "habitat", "text"),
        ("How long do adults of the species of {s} grow, in centimetres?", "length_cm", "cm"),
        ("Which naturalist first described the species of {s}?", "@naturalist", "person")]),
    "artwork": ("painting", "painting", [
        ("In what year was {s} made?", "year", "year"),
        ("Who painted {s}?", "@painter", "person"),
        ("In which city does {s} hang?", "city", "place"),
        ("What medium is {s}?", "medium", "text")]),
    "organisation": ("emblem", "emblem", [
        ("In what year was the organisation whose emblem is {s} founded?", "founded_year", "year"),
        ("In which city are the headquarters of the organisation whose emblem is {s}?", "city", "place"),
        ("Who founded the organisation whose emblem is {s}?", "@founder", "person"),
        ("How many members does the organisation whose emblem is {s} have?", "members", "count")]),
    "person": ("person", "person", [
        ("In what year was {s} born?", "born_year", "year"),
        ("In which city was {s} born?", "birth_city", "place"),
        ("What was the occupation of {s}?", "occupation", "text")]),
}
_ROLE_PHRASE = {"architect": "the architect of {s}", "painter": "the painter of {s}",
                "founder": "the founder of the organisation whose emblem is {s}",
                "naturalist": "the naturalist who described the species of {s}"}
_MULTIHOP = [("In which city was {p} born?", "birth_city", "place"),
             ("In what year was {p} born?", "born_year", "year")]


@dataclass
class Draft:
    """A question before it gets an id, split and image path."""

    question: str
    answers: list[str]
    category: str
    entity: str
    hops: list[str]
    kind: str  # single | multihop | crop
    extra: dict = field(default_factory=dict)


def aliases(value: object, kind: str, person: Entity | None = None) -> list[str]:
    """The gold answer first, then accepted variants."""
    if kind == "person" and person is not None:
        return [person.name, person.short_name]
    v = str(value)
    if kind == "year":
        return [v, f"in {v}", f"the year {v}"]
    if kind == "place":
        return [v, f"in {v}", f"the city of {v}", f"{v} city"]
    if kind == "m":
        return [v, f"{v} m", f"{v} metres", f"{v} meters"]
    if kind == "cm":
        return [v, f"{v} cm", f"{v} centimetres", f"{v} centimeters"]
    if kind == "count":
        return [v, f"{value:,}", f"{v} members"]
    return [v, f"in {v}"] if kind == "text" and " " in v else [v]


def subject_phrase(e: Entity, region: str | None) -> str:
    """'the landmark in this image', or for a scene 'the building on the left of this image'."""
    single, scene, _ = TEMPLATES[e.kind]
    if region is None:
        return f"the {single} in this image"
    where = f"on the {region}" if region in ("left", "right") else f"in the {region}"
    return f"the {scene} {where} of this image"


def fact_question(e: Entity, by_id: dict[str, Entity], template: tuple[str, str, str], subject: str,
                  kind: str) -> Draft:
    text, key, atype = template
    if key.startswith("@"):
        person = by_id[e.links[key[1:]]]
        answers = aliases(None, "person", person)
    else:
        answers = aliases(e.facts[key], atype)
    return Draft(text.format(s=subject), answers, e.category, e.id, [e.id], kind, {"fact": key})


def multihop_question(e: Entity, by_id: dict[str, Entity], rng: random.Random, subject: str,
                      kind: str = "multihop") -> Draft | None:
    if not e.links:
        return None
    role, pid = next(iter(e.links.items()))
    person = by_id[pid]
    text, key, atype = rng.choice(_MULTIHOP)
    p = _ROLE_PHRASE[role].format(s=subject)
    return Draft(text.format(p=p), aliases(person.facts[key], atype), e.category, e.id, [e.id, pid], kind,
                 {"fact": f"@{role}.{key}"})


def entity_questions(e: Entity, by_id: dict[str, Entity], rng: random.Random, n_single: int = 2
                     ) -> list[Draft]:
    """Questions about an entity shown on its own: ``n_single`` single-hop, plus one multi-hop."""
    subject = subject_phrase(e, None)
    templates = rng.sample(TEMPLATES[e.kind][2], min(n_single, len(TEMPLATES[e.kind][2])))
    out = [fact_question(e, by_id, t, subject, "single") for t in templates]
    hop = multihop_question(e, by_id, rng, subject)
    return out + ([hop] if hop else [])


def crop_question(e: Entity, by_id: dict[str, Entity], rng: random.Random, region: str) -> Draft:
    """A question about the entity placed in ``region`` of a scene."""
    subject = subject_phrase(e, region)
    if e.links and rng.random() < 0.3:
        d = multihop_question(e, by_id, rng, subject, kind="crop")
        if d is not None:
            return d
    return fact_question(e, by_id, rng.choice(TEMPLATES[e.kind][2]), subject, "crop")
