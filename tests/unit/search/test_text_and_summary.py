"""Text index (tantivy BM25, snippets, free-text queries) and the extractive summariser."""

from __future__ import annotations

import json

import pytest

from components.search.summarise import ExtractiveSummariser, extractive_summary, load_prompt
from components.search.text_index import IndexFormatError, TextIndex, best_passage
from components.search.types import ImageHit, TextHit

DOCS = [
    {"id": "a", "title": "Velmar Bridge", "text": "The Velmar Bridge crosses the Oru river. It opened in 1911. "
     "It is painted green.", "url": "https://x/a"},
    {"id": "b", "title": "Oru river", "text": "The Oru river flows north. Many bridges cross it."},
    {"id": "c", "title": "Pexkin Hall", "text": "Pexkin Hall is a concert hall. Its organ dates from 1911."},
]


@pytest.fixture(scope="module")
def index():
    return TextIndex.from_docs(DOCS)


def test_bm25_ranks_and_boosts_titles(index):
    hits = index.search("When did the Velmar Bridge open?", 3)
    assert hits[0].doc_id == "a" and hits[0].url == "https://x/a"
    assert "opened in 1911" in hits[0].snippet
    assert index.search("oru", 3)[0].doc_id == "b"  # title match beats a body mention


@pytest.mark.parametrize("query", ['title:(( "AND OR', "NOT -+~^*", "???", "   "])
def test_any_text_is_a_valid_query(index, query):
    assert isinstance(index.search(query, 5), list)


def test_get_and_on_disk_build(tmp_path):
    (tmp_path / "docs.jsonl").write_text("\n".join(json.dumps(d) for d in DOCS))
    TextIndex.build(tmp_path / "docs.jsonl", tmp_path / "idx")
    loaded = TextIndex.load(tmp_path / "idx")
    assert loaded.num_docs == 3 and loaded.get("c")["title"] == "Pexkin Hall" and loaded.get("zz") is None


def test_bad_corpus_is_named(tmp_path):
    (tmp_path / "docs.jsonl").write_text('{"id": "a", "text": "ok"}\nnot json\n')
    with pytest.raises(IndexFormatError, match="docs.jsonl:2"):
        TextIndex.build(tmp_path / "docs.jsonl", tmp_path / "idx")
    with pytest.raises(IndexFormatError, match="dmms index build"):
        TextIndex.load(tmp_path / "nothing")


def test_best_passage_picks_the_covering_sentence():
    text = "Alpha beta. Gamma delta epsilon. Zeta eta."
    assert best_passage(text, {"delta", "epsilon"}, max_chars=20) == "Gamma delta epsilon."


def test_extractive_summary_is_focused_deduplicated_and_titled():
    pages = ["The tower is 300 m tall. The tower is 300 m tall! Bakeries sell bread.",
             "The tower was built in 1889. Parks are green."]
    out = extractive_summary("how tall is the tower built", ["Tower", "History"], pages, 2)
    assert out == "Tower: The tower is 300 m tall. History: The tower was built in 1889."


async def test_extractive_summariser_text_and_image():
    s = ExtractiveSummariser()
    hits = [TextHit(doc_id="a", title="Velmar Bridge", url="", snippet="", score=1.0)]
    text = await s.summarise_text("velmar bridge opened", hits, [DOCS[0]["text"]])
    assert "1911" in text and text.startswith("Velmar Bridge:")
    ih = [ImageHit(image_id="i", doc_id="a", title="Velmar Bridge", url="", snippet="A green bridge", score=1)]
    img = await s.summarise_image(ih, [DOCS[0]["text"]])
    assert img.startswith("The image most likely shows Velmar Bridge.")
    assert "no matching" in await s.summarise_image([], [])


def test_prompts_are_templates_with_the_paper_lengths():
    assert "10 to 12 sentences" in load_prompt("text").substitute(query="q", results="r")
    assert "4 to 5 sentences" in load_prompt("image").substitute(results="r")
