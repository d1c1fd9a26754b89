"""Answer text, normalised and read: the pure string work under the rule judge.

Why its own module: the rule judge is a reward (GRPO), a filter (datagen) and a score (evaluation),
so what counts as "the same answer" must be exact, tested case by case, and free of any model.
Everything here is a pure function of strings:

- :func:`normalise` — case, accents, punctuation, articles, whitespace, number words ("three" → 3),
  thousands separators ("1,000" and "1 000" → 1000), unit spellings ("metres" → m);
- :func:`quantities` — the numbers in a text with the unit written after each;
- :func:`hedge_cue` / :func:`negation_cue` — words that make an answer name several candidates or
  deny one ("Paris or Rome", "maybe", "not Paris", "Paris is wrong");
- :func:`segments` — the parts of a list ("Rome, Paris, Berlin").

Run the doctests: ``.venv/bin/python -m pytest -q --doctest-modules components/agent/answers.py``.
"""

from __future__ import annotations

import re
import string
import unicodedata
from dataclasses import dataclass

GIVE_UP_MARKERS = ("unable to answer", "lack of relevant information", "cannot answer", "can't answer",
                   "do not know", "don't know")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_NUMBER_WORDS = {w: str(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty".split())}
_TENS = {"thirty": "30", "forty": "40", "fifty": "50", "sixty": "60", "seventy": "70", "eighty": "80",
         "ninety": "90", "hundred": "100"}
# Unit spellings → one canonical token; a number's unit is the word right after it.
_UNITS = {
    "m": "m", "metre": "m", "metres": "m", "meter": "m", "meters": "m",
    "km": "km", "kilometre": "km", "kilometres": "km", "kilometer": "km", "kilometers": "km",
    "cm": "cm", "centimetre": "cm", "centimetres": "cm", "centimeter": "cm", "centimeters": "cm",
    "mm": "mm", "millimetre": "mm", "millimetres": "mm",
    "ft": "ft", "foot": "ft", "feet": "ft", "mi": "mi", "mile": "mi", "miles": "mi",
    "kg": "kg", "kilogram": "kg", "kilograms": "kg", "g": "g", "gram": "g", "grams": "g",
    "t": "t", "tonne": "t", "tonnes": "t", "ton": "t", "tons": "t", "lb": "lb", "lbs": "lb", "pounds": "lb",
    "s": "s", "second": "s", "seconds": "s", "min": "min", "minute": "min", "minutes": "min",
    "h": "h", "hour": "h", "hours": "h", "year": "year", "years": "year", "yr": "year",
    "day": "day", "days": "day", "percent": "%", "%": "%", "°c": "°c", "celsius": "°c",
}
_HEDGES = ("or", "either", "maybe", "perhaps", "possibly", "might", "could", "unsure", "unclear",
           "guess", "probably", "likely", "somewhere", "between", "vs", "versus")
_NEGATIONS = ("not", "no", "never", "neither", "nor", "wrong", "incorrect", "false", "isnt", "wasnt",
              "arent", "werent", "doesnt", "dont", "didnt", "except", "instead", "rather")
_LIST_SPLIT = re.compile(r"\s*(?:[,;/&]|\band\b|\bor\b|\bvs\b|\bversus\b)\s*")
_NUM_TOKEN = re.compile(r"^[-+]?\d+(?:\.\d+)?$")


def _strip_accents(text: str) -> str:
    text = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in text if not unicodedata.combining(ch))


def _number_words(words: list[str]) -> list[str]:
    """'twenty one' → '21', 'three' → '3' (small numbers, as answers about counts use them)."""
    out: list[str] = []
    tens_word = False  # the previous output is a spelled-out 20, 30, … 90
    for w in words:
        if w in _NUMBER_WORDS and tens_word and int(_NUMBER_WORDS[w]) < 10:
            out[-1] = str(int(out[-1]) + int(_NUMBER_WORDS[w]))
            tens_word = False
            continue
        value = _NUMBER_WORDS.get(w) or _TENS.get(w)
        out.append(value or w)
        tens_word = value is not None and value in ("20", "30", "40", "50", "60", "70", "80", "90")
    return out


def normalise(text: str) -> str:
    """Lowercase, strip accents, punctuation, articles, thousands separators; number words as
    digits; unit spellings canonical; single spaces.

    >>> normalise("  The Eiffel-Tower! ")
    'eiffel tower'
    >>> normalise("1,000 metres"), normalise("three circles"), normalise("3.5 km."), normalise("1 000")
    ('1000 m', '3 circles', '3.5 km', '1000')
    """
    text = _strip_accents(text).lower().replace("’", "'")
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)              # 1,000 → 1000
    text = re.sub(r"(?<=\b\d)\s(?=\d{3}\b)|(?<=\b\d\d)\s(?=\d{3}\b)|(?<=\b\d\d\d)\s(?=\d{3}\b)", "", text)
    text = text.replace("'", "")                                   # isn't → isnt
    text = re.sub(r"(?<=\d)(?=[a-z%°])", " ", text)               # 156m → 156 m
    text = "".join(" " if ch in string.punctuation and ch not in ".%" else ch for ch in text)
    text = re.sub(r"(?<!\d)\.|\.(?!\d)", " ", text)               # keep 3.5; drop sentence marks
    text = _ARTICLES.sub(" ", text)
    words = _number_words(text.split())
    words = [_UNITS.get(w, w) if i and _NUM_TOKEN.match(words[i - 1]) else w for i, w in enumerate(words)]
    return " ".join(words)


@dataclass(frozen=True)
class Quantity:
    value: float
    unit: str | None


def quantities(normalised: str) -> list[Quantity]:
    """Numbers of a normalised text, each with the canonical unit written right after it.

    >>> quantities(normalise("It is 156 metres tall, built in 1889."))
    [Quantity(value=156.0, unit='m'), Quantity(value=1889.0, unit=None)]
    """
    words = normalised.split()
    units = set(_UNITS.values())
    out = []
    for i, w in enumerate(words):
        if _NUM_TOKEN.match(w):
            nxt = words[i + 1] if i + 1 < len(words) else None
            out.append(Quantity(float(w), nxt if nxt in units else None))
    return out


def is_number(normalised: str) -> bool:
    """A bare quantity: one number, optionally with its unit ('156', '156 m')."""
    q = quantities(normalised)
    return len(q) == 1 and len(normalised.split()) == 1 + (q[0].unit is not None)


def _cue(normalised: str, cues: tuple[str, ...], gold: str) -> str | None:
    gold_words = set(gold.split())
    for w in normalised.split():
        if w in cues and w not in gold_words:
            return w
    return None


def hedge_cue(normalised: str, gold: str = "") -> str | None:
    """The first word that offers alternatives or doubt ('or', 'maybe', …) and is not in the gold.

    >>> hedge_cue(normalise("Paris or Rome")), hedge_cue(normalise("Paris")), hedge_cue("or", "or")
    ('or', None, None)
    """
    return _cue(normalised, _HEDGES, gold)


def negation_cue(normalised: str, gold: str = "") -> str | None:
    """The first word that denies ('not', "isn't", 'wrong', …) and is not in the gold.

    >>> negation_cue(normalise("Paris is wrong, it is Rome")), negation_cue(normalise("It isn't Paris"))
    ('wrong', 'isnt')
    """
    return _cue(normalised, _NEGATIONS, gold)


def segments(raw: str) -> list[str]:
    """The normalised, non-empty parts of a list ('Rome, Paris and Berlin' → 3 parts).

    >>> segments("Rome, Paris and Berlin")
    ['rome', 'paris', 'berlin']
    """
    raw = re.sub(r"(?<=\d),(?=\d{3}\b)", "", _strip_accents(raw))
    raw = re.sub(r"(?<!\d)\.|\.(?!\d)", " ", raw)
    return [n for part in _LIST_SPLIT.split(raw.lower()) if (n := normalise(part))]


def name_like(raw_part: str) -> bool:
    """A short part that reads as a candidate answer: a number, or at most four words that are all
    capitalised ('France', 'Gustave Eiffel', '1887'), unlike a description ('a French engineer')."""
    words = [w for w in re.findall(r"[\w'-]+", raw_part) if w.lower() not in ("the", "a", "an", "of", "de")]
    if not words or len(words) > 4:
        return False
    return all(w[0].isupper() or w[0].isdigit() for w in words)


def raw_segments(raw: str) -> list[str]:
    """The raw (not normalised) parts of a list, empty ones dropped."""
    raw = re.sub(r"(?<=\d),(?=\d{3}\b)", "", raw)
    return [p.strip(" .!?") for p in re.split(r"\s*(?:[,;/&]|\band\b|\bor\b)\s*", raw) if p.strip(" .!?")]


def gives_up(normalised: str) -> bool:
    return any(m.replace("'", "") in normalised for m in GIVE_UP_MARKERS)
