"""Shared result types of the search tool-server (docs/design.md §5).

Every backend (local tantivy/image index, web APIs) returns these, the HTTP app serialises them, and the client
parses them back, so the wire format lives in one place. Import-only module: nothing to run.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator


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


# ---- HTTP API (docs/design.md §5) -----------------------------------------------------------------

class TextSearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1, max_length=2000, description="Free-text query.")
    top_k: int = Field(5, ge=1, le=50, description="Number of results.")


class ImageSearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image_b64: str = Field(min_length=1, description="The image, base64 (PNG/JPEG/WebP/...).")
    region: str | list[float] | None = Field(
        None,
        description="null: the whole image; [x1, y1, x2, y2] in pixels of the image sent; or a phrase "
        "('top-left', 'the right half', 'center', or a referring expression when a grounder is set).",
    )
    top_k: int = Field(5, ge=1, le=50, description="Number of results.")

    @field_validator("region")
    @classmethod
    def _check_region(cls, value: str | list[float] | None) -> str | list[float] | None:
        if isinstance(value, list) and len(value) != 4:
            raise ValueError("a box region is [x1, y1, x2, y2]: exactly 4 numbers")
        if isinstance(value, str) and not (0 < len(value.strip()) <= 500):
            raise ValueError("a phrase region must have 1 to 500 characters")
        return value


class TextSearchResponse(BaseModel):
    results: list[TextHit]
    summary: str
    cached: bool = Field(description="True when results and summary came from the cache.")


class ImageSearchResponse(BaseModel):
    results: list[ImageHit]
    summary: str
    crop_box: list[int] | None = Field(None, description="The box searched, [x1, y1, x2, y2], or null.")
    cached: bool = Field(description="True when results and summary came from the cache.")
    note: str | None = Field(None, description="Set when the search differs from what was asked: a region that "
                             "could not be located was searched as the whole image (also the start of summary).")


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail
