"""Wikipedia-style pages of the offline world's entities.

Why: text search over the corpus must find the facts a question asks about, phrased as a page
would phrase them (a lead sentence, then details), and naming linked entities by their full
names so a multi-hop question can be followed page to page. Every fact a question's answer uses
is written here verbatim (years as digits, cities and people by name).

Library module: ``page_text(entity, by_id)``; ``page_url(entity)``.
"""

from __future__ import annotations

from components.world.entities import Entity


def page_url(e: Entity) -> str:
    return "https://world.local/wiki/" + e.name.replace(" ", "_")


def _article(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def page_text(e: Entity, by_id: dict[str, Entity]) -> str:
    """The page of ``e``; linked entities are named in full."""
    f = e.facts
    linked = {role: by_id[i] for role, i in e.links.items()}
    if e.kind == "person":
        works = sorted((x for x in by_id.values() if e.id in x.links.values()), key=lambda x: x.id)
        made = "; ".join(x.name for x in works[:6])
        return (f"{e.name} ({f['born_year']}–{f['died_year']}) was {_article(f['occupation'])}. "
                f"{e.short_name} was born in {f['born_year']} in the city of {f['birth_city']}, and died "
                f"in {f['died_year']}. Full name: {e.name}. Born: {f['birth_city']}, {f['born_year']}. "
                + (f"Known for: {made}." if made else "Little of the work survives."))
    if e.kind == "landmark":
        a = linked["architect"]
        return (f"The {e.name} is a {f['type'].lower()} in the city of {f['city']}. It was designed by the "
                f"architect {a.name} and completed in {f['completed_year']}. The {e.name} is "
                f"{f['height_m']} metres tall. Architect: {a.name}. Completed: {f['completed_year']}. "
                f"Height: {f['height_m']} m. Location: {f['city']}.")
    if e.kind == "species":
        d = linked["naturalist"]
        return (f"The {e.name} is a species of {f['animal']} found in {f['habitat']}. It was first "
                f"described in {f['discovered_year']} by the naturalist {d.name}. Adults reach a length "
                f"of {f['length_cm']} cm. Habitat: {f['habitat']}. Described: {f['discovered_year']}. "
                f"Discovered by: {d.name}. Length: {f['length_cm']} cm.")
    if e.kind == "artwork":
        p = linked["painter"]
        return (f"{e.name} is a painting by {p.name}, made in {f['year']} ({f['medium']}). It hangs in a "
                f"gallery in the city of {f['city']} and is {f['width_cm']} cm wide. Artist: {p.name}. "
                f"Year: {f['year']}. Medium: {f['medium']}. Location: {f['city']}.")
    founder = linked["founder"]
    return (f"The {e.name} is a {f['industry']} {f['type'].lower()} founded in {f['founded_year']} by "
            f"{founder.name}. Its headquarters are in the city of {f['city']}. It has {f['members']} "
            f"members. Founded: {f['founded_year']}. Founder: {founder.name}. Headquarters: {f['city']}. "
            f"Members: {f['members']}.")
