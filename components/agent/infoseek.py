"""InfoSeek's answer fields, read in one place: the gold aliases and the accepted numeric range.

Why one reader: datagen seeds DeepMMSearchVQA from InfoSeek (``components/datagen/loaders.py``)
and evaluation scores on it (``components/evaluate/benchmarks.py``); both must agree on what the
gold is. A row holds ``answer`` and ``answer_eng`` (lists of strings, or for numeric questions
``{"wikidata": 1.0, "range": [0.9, 1.1]}``) and ``answer_eval`` (strings, or such a dict). A
numeric answer is CORRECT anywhere inside its ``range`` (InfoSeek's own evaluation), so the range
travels with the item (``answer_range``) to the judge.

    answers, answer_range = infoseek_answers({"answer": [{"wikidata": 156, "range": [150, 162]}]})
    # (['156'], (150.0, 162.0))
"""

from __future__ import annotations

from typing import Any


def _number(v: Any) -> str:
    f = float(v)
    return str(int(f)) if f.is_integer() else repr(f)


def _range(value: Any) -> tuple[float, float] | None:
    if isinstance(value, list | tuple) and len(value) == 2:
        try:
            lo, hi = float(value[0]), float(value[1])
        except (TypeError, ValueError):
            return None
        return (min(lo, hi), max(lo, hi))
    return None


def infoseek_answers(row: dict[str, Any]) -> tuple[list[str], tuple[float, float] | None]:
    """Aliases (``answer_eng``, ``answer``, ``answer_eval`` strings; numbers from ``wikidata``) and
    the union of the numeric ranges given, if any.

    >>> infoseek_answers({"answer": ["Paris"], "answer_eng": ["Paris", "City of Paris"]})
    (['Paris', 'City of Paris'], None)
    >>> infoseek_answers({"answer": [{"wikidata": 1.0, "range": [0.9, 1.1]}], "answer_eval": [{"range": [0.8, 1.2]}]})
    (['1'], (0.8, 1.2))
    """
    out: list[str] = []
    ranges: list[tuple[float, float]] = []
    for key in ("answer_eng", "answer", "answer_eval"):
        values = row.get(key)
        for a in values if isinstance(values, list) else [values] if values is not None else []:
            if isinstance(a, dict):
                if a.get("wikidata") is not None:
                    out.append(_number(a["wikidata"]))
                if (r := _range(a.get("range"))) is not None:
                    ranges.append(r)
            elif isinstance(a, int | float) and not isinstance(a, bool):
                out.append(_number(a))
            elif isinstance(a, str) and a.strip():
                out.append(a.strip())
    seen: set[str] = set()
    aliases = [a for a in out if not (a.casefold() in seen or seen.add(a.casefold()))]
    span = (min(r[0] for r in ranges), max(r[1] for r in ranges)) if ranges else None
    return aliases, span
