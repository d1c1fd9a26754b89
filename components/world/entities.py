"""Entities of the offline world: generated names, facts and the links between them.

Why: the offline world stands in for the web. Its entities (landmarks, species, artworks,
organisations, people) have invented names — syllable-based, never looked up — and facts (dates,
places, numbers, people) that point at each other: a landmark's architect is a person entity, who
was born in a city; an artwork's artist, an organisation's founder and a species' discoverer are
people too. That gives single-hop and multi-hop questions whose answers live on the pages.

Near-duplicate distractors (a similar name and a similar image, with different facts) make
search non-trivial. Everything is derived from one ``random.Random(seed)``: same seed, same world.

Library module: ``build_entities(n, rng)``; used by :mod:`components.world.make`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

KINDS = ("person", "landmark", "species", "artwork", "organisation")
# Share of each kind in the world (people first: the others link to them).
KIND_SHARE = {"person": 0.25, "landmark": 0.2, "species": 0.2, "artwork": 0.2, "organisation": 0.15}
ROLE_OF = {"landmark": "architect", "artwork": "painter", "organisation": "founder", "species": "naturalist"}
CATEGORY = {"landmark": "landmark/architecture", "species": "nature/species", "artwork": "art",
            "organisation": "organisation", "person": "people"}

_ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "kr",
           "st", "th", "tr", "sh", "ch", "gl", "pl"]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ei", "ou", "ia"]
_CODAS = ["", "", "", "n", "r", "l", "s", "m", "th", "x"]
_LANDMARK_TYPES = ["Tower", "Gate", "Basilica", "Bridge", "Observatory", "Citadel", "Lighthouse",
                   "Pavilion", "Aqueduct", "Palace"]
_ANIMALS = ["heron", "finch", "lizard", "beetle", "otter", "moth", "salamander", "gecko", "ibis",
            "marten", "tern", "newt"]
_HABITATS = ["mangrove swamps", "alpine meadows", "coastal dunes", "cloud forests", "river deltas",
             "salt marshes", "limestone caves", "high deserts", "kelp forests", "bamboo thickets"]
_ART_ADJ = ["Silent", "Crimson", "Drifting", "Hidden", "Burning", "Quiet", "Broken", "Golden",
            "Hollow", "Endless", "Fading", "Wandering"]
_ART_NOUN = ["Harbour", "Garden", "Procession", "Orchard", "Lantern", "Tide", "Bell", "Meadow",
             "Window", "Market", "Staircase", "Voyage"]
_MEDIA = ["oil on canvas", "tempera on wood", "watercolour on paper", "fresco", "gouache on board"]
_ORG_TYPES = ["Company", "Guild", "Society", "Institute", "Foundation", "Syndicate", "Works"]
_INDUSTRIES = ["shipbuilding", "astronomy", "textiles", "printing", "glassmaking", "cartography",
               "clockmaking", "pharmacy", "railways", "brewing"]


@dataclass
class Entity:
    """One entity: its name, facts (answers live here), links to other entities and gold metadata."""

    id: str
    kind: str
    name: str
    short_name: str
    facts: dict[str, Any]
    links: dict[str, str] = field(default_factory=dict)  # role -> entity id
    distractor_of: str | None = None
    style_seed: int = 0

    @property
    def category(self) -> str:
        return CATEGORY[self.kind]

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "name": self.name, "short_name": self.short_name,
                "category": self.category, "facts": self.facts, "links": self.links,
                "distractor_of": self.distractor_of, "style_seed": self.style_seed}


class Namer:
    """Unique syllable-based names (case-insensitive unique across the whole world)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.used: set[str] = set()

    def word(self, syllables: tuple[int, int] = (2, 3)) -> str:
        for _ in range(1000):
            n = self.rng.randint(*syllables)
            w = "".join(self.rng.choice(_ONSETS) + self.rng.choice(_VOWELS) for _ in range(n))
            w = (w + self.rng.choice(_CODAS)).capitalize()
            if w.lower() not in self.used and 4 <= len(w) <= 11:
                self.used.add(w.lower())
                return w
        raise RuntimeError("name space exhausted: lower --entities")

    def variant(self, word: str) -> str:
        """A near-duplicate of ``word`` (one vowel changed), still unique."""
        vowels = [i for i, c in enumerate(word) if c.lower() in "aeiou"]
        for _ in range(200):
            i = self.rng.choice(vowels)
            repl = self.rng.choice([v for v in "aeiou" if v != word[i].lower()])
            cand = word[:i] + (repl.upper() if i == 0 else repl) + word[i + 1:]
            if cand.lower() not in self.used:
                self.used.add(cand.lower())
                return cand
        return self.word()


def kind_counts(n: int) -> dict[str, int]:
    """How many entities of each kind make ``n`` (every kind at least one when n >= 5)."""
    counts = {k: max(1, int(n * KIND_SHARE[k])) for k in KINDS}
    while sum(counts.values()) > n:
        k = max(counts, key=lambda key: counts[key])
        counts[k] -= 1
    i = 0
    while sum(counts.values()) < n:
        counts[KINDS[i % len(KINDS)]] += 1
        i += 1
    return counts


def _person(eid: str, namer: Namer, rng: random.Random, cities: list[str], role: str) -> Entity:
    first, last = namer.word((1, 2)), namer.word((2, 3))
    born = rng.randint(1720, 1930)
    return Entity(eid, "person", f"{first} {last}", last, {
        "occupation": role, "born_year": born, "birth_city": rng.choice(cities),
        "died_year": born + rng.randint(38, 92), "first_name": first,
    })


def _facts(kind: str, rng: random.Random, cities: list[str], person: Entity | None) -> dict[str, Any]:
    base = person.facts["born_year"] + rng.randint(25, 55) if person else rng.randint(1760, 1990)
    if kind == "landmark":
        return {"completed_year": base, "city": rng.choice(cities), "height_m": rng.randint(18, 420),
                "type": rng.choice(_LANDMARK_TYPES)}
    if kind == "species":
        return {"discovered_year": base, "habitat": rng.choice(_HABITATS),
                "length_cm": rng.randint(3, 240), "animal": rng.choice(_ANIMALS)}
    if kind == "artwork":
        return {"year": base, "medium": rng.choice(_MEDIA), "city": rng.choice(cities),
                "width_cm": rng.randint(30, 600)}
    return {"founded_year": base, "city": rng.choice(cities), "members": rng.randint(12, 90000),
            "industry": rng.choice(_INDUSTRIES), "type": rng.choice(_ORG_TYPES)}


def _name(kind: str, word: str, facts: dict[str, Any], rng: random.Random) -> tuple[str, str]:
    """Full and short name of a non-person entity built around the invented ``word``."""
    if kind == "landmark":
        return f"{word} {facts['type']}", word
    if kind == "species":
        return f"{word} {facts['animal']}", word
    if kind == "artwork":
        return f"The {rng.choice(_ART_ADJ)} {word} {rng.choice(_ART_NOUN)}", word
    return f"{word} {facts['type']}", word


def build_entities(n: int, rng: random.Random) -> tuple[list[Entity], list[str]]:
    """``n`` entities (about a tenth of them near-duplicate distractors) and the world's cities."""
    if n < 5:
        raise ValueError(f"--entities must be at least 5 (one of each kind), got {n}")
    namer = Namer(rng)
    cities = [namer.word((2, 3)) for _ in range(max(6, n // 8))]
    n_twins = max(1, n // 10) if n >= 10 else 0
    counts = kind_counts(n - n_twins)
    entities: list[Entity] = []
    roles = list(ROLE_OF.values())
    people = [_person(f"e{i:05d}", namer, rng, cities, roles[i % len(roles)]) for i in range(counts["person"])]
    entities.extend(people)
    by_role: dict[str, list[Entity]] = {r: [p for p in people if p.facts["occupation"] == r] for r in roles}
    for kind in KINDS[1:]:
        for _ in range(counts[kind]):
            eid = f"e{len(entities):05d}"
            pool = by_role[ROLE_OF[kind]] or people
            person = rng.choice(pool)
            facts = _facts(kind, rng, cities, person)
            name, short = _name(kind, namer.word(), facts, rng)
            entities.append(Entity(eid, kind, name, short, facts, {ROLE_OF[kind]: person.id}))
    for e in entities:
        e.style_seed = rng.randrange(2**31)
    originals = [e for e in entities if e.kind != "person"] or list(entities)
    for src in rng.sample(originals, min(n_twins, len(originals))):
        entities.append(_twin(src, f"e{len(entities):05d}", namer, rng, cities, people))
    return entities, cities


def _twin(src: Entity, eid: str, namer: Namer, rng: random.Random, cities: list[str],
          people: list[Entity]) -> Entity:
    """A distractor: a name one vowel away, the same drawing style, different facts and people."""
    word = namer.variant(src.short_name)
    person = rng.choice(people)
    facts = _facts(src.kind, rng, cities, person)
    for keep in ("type", "animal"):  # same kind of thing: "Talori Tower" vs "Talora Tower"
        if keep in src.facts:
            facts[keep] = src.facts[keep]
    name = src.name.replace(src.short_name, word)
    links = {role: person.id for role in src.links}
    return Entity(eid, src.kind, name, word, facts, links, distractor_of=src.id, style_seed=src.style_seed)
