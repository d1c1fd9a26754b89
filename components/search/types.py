"""Shared result types of the search tool-server (DESIGN.md §5).

Every backend (local tantivy/image index, web APIs) returns these, the HTTP app serialises them, and the client
parses them back, so the wire format lives in one place. Import-only module: nothing to run.
"""

from __future__ import annotations

from pydantic import BaseModel, Field


class TextHit(BaseModel):
    """One text-search result."""

    doc_id: str = Field(description="Corpus document id (or the URL for web backends).")
    title: str = Field(description="Document title.")
    url: str = Field(default="", description="Document URL (may be empty for local corpora without URLs).")
    snippet: str = Field(default="", description="Best passage of the document for the query.")
    score: float = Field(description="Backend relevance score, higher is better.")


class ImageHit(BaseModel):
    """One image-search result."""

    image_id: str = Field(description="Corpus image id (or the image URL for web backends).")
    doc_id: str = Field(description="Document the image belongs to.")
    title: str = Field(description="Title of the image's document.")
    url: str = Field(default="", description="URL of the image's page.")
    snippet: str = Field(default="", description="Caption or page text near the image.")
    score: float = Field(description="Similarity score, higher is better.")
