"""BM25 text index over a corpus's ``docs.jsonl``, on disk, through tantivy (Lucene-class engine).

Why tantivy: block-max WAND top-k pruning gives ~8k queries/s on 100k docs on one core, three
orders of magnitude above ``rank_bm25`` that research code uses (``python -m bench.search_text``).
Titles are boosted; id/title/url/text are stored so a hit carries everything the server returns;
the snippet is the passage of the document that best covers the query's terms.

    idx = TextIndex.build(Path("corpus/docs.jsonl"), Path("index/text"))
    idx = TextIndex.load(Path("index/text"))
    idx.search("capital of france", top_k=5)   # -> list[TextHit]

Queries are free text: they are reduced to their word tokens before parsing, so no user input can
reach tantivy's query syntax (quotes, colons, AND/OR) and fail.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import tantivy

from components.search.types import TextHit

log = logging.getLogger(__name__)

TITLE_BOOST = 2.0
SNIPPET_CHARS = 320
_WORD = re.compile(r"\w+", re.UNICODE)
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")


class IndexFormatError(ValueError):
    """A corpus or index folder is not in the docs/design.md §5 format; the message says what is wrong."""


def words(text: str) -> list[str]:
    """Lower-cased word tokens (the unit of query matching and snippet scoring)."""
    if text.isascii():  # lower-casing ASCII moves no word boundary: one pass, no per-word calls
        return _WORD.findall(text.lower())
    return [w.lower() for w in _WORD.findall(text)]


def _schema() -> tantivy.Schema:
    b = tantivy.SchemaBuilder()
    b.add_text_field("id", stored=True, tokenizer_name="raw")
    b.add_text_field("title", stored=True, tokenizer_name="en_stem")
    b.add_text_field("text", stored=True, tokenizer_name="en_stem")
    b.add_text_field("url", stored=True, tokenizer_name="raw", index_option="basic")
    return b.build()


def iter_docs(path: Path) -> Iterator[dict[str, Any]]:
    """Documents of a ``docs.jsonl``, validated; raises :class:`IndexFormatError` naming the line."""
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
            except json.JSONDecodeError as exc:
                raise IndexFormatError(f"{path}:{n}: not JSON ({exc.msg})") from None
            if not isinstance(doc, dict) or not doc.get("id") or "text" not in doc:
                raise IndexFormatError(f"{path}:{n}: a doc needs at least 'id' and 'text'")
            yield doc


def best_passage(text: str, query_terms: set[str], max_chars: int = SNIPPET_CHARS) -> str:
    """The window of consecutive sentences that covers most distinct query terms (ties: earliest)."""
    sentences = [s.strip() for s in _SENTENCE.split(text) if s and s.strip()]
    if not sentences:
        return ""
    best_i, best_score = 0, -1.0
    for i, sentence in enumerate(sentences):
        toks = words(sentence)
        hits = query_terms.intersection(toks)
        score = len(hits) + 0.01 * sum(t in query_terms for t in toks)
        if score > best_score:
            best_i, best_score = i, score
    out = sentences[best_i]
    j = best_i + 1
    while j < len(sentences) and len(out) + 1 + len(sentences[j]) <= max_chars:
        out = f"{out} {sentences[j]}"
        j += 1
    return out if len(out) <= max_chars else out[: max_chars - 1].rstrip() + "…"


class TextIndex:
    """A tantivy BM25 index; thread-safe for concurrent searches."""

    def __init__(self, index: tantivy.Index, path: Path | None = None):
        self._index = index
        self.path = path
        self._index.reload()
        self._searcher = self._index.searcher()

    @classmethod
    def build(
        cls, docs_path: Path, out_dir: Path, *, heap_bytes: int = 128_000_000, threads: int = 0
    ) -> TextIndex:
        """Index every doc of ``docs_path`` into a fresh folder ``out_dir``."""
        if not docs_path.is_file():
            raise IndexFormatError(f"{docs_path} is missing: a corpus needs docs.jsonl (docs/design.md §5)")
        out_dir.mkdir(parents=True, exist_ok=True)
        index = tantivy.Index(_schema(), path=str(out_dir), reuse=False)
        count = cls._write(index, iter_docs(docs_path), heap_bytes, threads)
        log.info("text index: %d docs -> %s", count, out_dir)
        return cls(index, out_dir)

    @classmethod
    def from_docs(cls, docs: Iterable[dict[str, Any]]) -> TextIndex:
        """An in-memory index (benchmarks, unit tests)."""
        index = tantivy.Index(_schema())
        cls._write(index, docs, 128_000_000, 0)
        return cls(index)

    @staticmethod
    def _write(index: tantivy.Index, docs: Iterable[dict[str, Any]], heap: int, threads: int) -> int:
        writer = index.writer(heap, threads)
        count = 0
        for doc in docs:
            writer.add_document(tantivy.Document(
                id=str(doc["id"]), title=str(doc.get("title") or ""),
                text=str(doc.get("text") or ""), url=str(doc.get("url") or ""),
            ))
            count += 1
        writer.commit()
        writer.wait_merging_threads()
        return count

    @classmethod
    def load(cls, path: Path) -> TextIndex:
        if not (path / "meta.json").is_file():
            raise IndexFormatError(f"{path} holds no tantivy index: build one with `dmms index build`")
        return cls(tantivy.Index.open(str(path)), path)

    @property
    def num_docs(self) -> int:
        return self._searcher.num_docs

    def _query(self, text: str) -> tantivy.Query | None:
        toks = words(text)
        if not toks:
            return None
        query, _errors = self._index.parse_query_lenient(
            " ".join(toks), ["title", "text"], field_boosts={"title": TITLE_BOOST}
        )
        return query

    def search(self, query: str, top_k: int) -> list[TextHit]:
        """Top ``top_k`` documents by BM25 with their best passage; empty for a query with no words."""
        parsed = self._query(query)
        if parsed is None or top_k <= 0:
            return []
        terms = set(words(query))
        hits = []
        for score, addr in self._searcher.search(parsed, limit=top_k, count=False).hits:
            doc = self._searcher.doc(addr)
            text = doc.get_first("text") or ""
            hits.append(TextHit(
                doc_id=doc.get_first("id"), title=doc.get_first("title") or "",
                url=doc.get_first("url") or "", snippet=best_passage(text, terms), score=float(score),
            ))
        return hits

    def search_ids(self, query: str, top_k: int) -> list[tuple[str, float]]:
        """Only (doc_id, score): the bare engine, for benchmarks."""
        parsed = self._query(query)
        if parsed is None:
            return []
        res = self._searcher.search(parsed, limit=top_k, count=False).hits
        return [(self._searcher.doc(a).get_first("id"), float(s)) for s, a in res]

    def get(self, doc_id: str) -> dict[str, str] | None:
        """A stored document by id: {id, title, url, text}, or None."""
        q = tantivy.Query.term_query(self._index.schema, "id", doc_id)
        hits = self._searcher.search(q, limit=1, count=False).hits
        if not hits:
            return None
        doc = self._searcher.doc(hits[0][1])
        return {k: doc.get_first(k) or "" for k in ("id", "title", "url", "text")}
