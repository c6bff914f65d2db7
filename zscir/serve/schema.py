"""The JSON shapes of the API, for its OpenAPI schema (the handlers build plain dicts of the same shape)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class SearchJSON(BaseModel):
    """POST /search as application/json: the reference by gallery id or as base64."""

    image_base64: str | None = Field(None, description="The reference image's file bytes as base64 (a data: URI is "
                                                       "accepted). Give exactly one of image, image_base64, image_id.")
    image_id: str | None = Field(None, description="The id of a gallery image to use as the reference "
                                                   "(it is left out of its own results).")
    text: str | None = Field(None, description="The modification text: what to change in the reference. Without "
                                               "an image: a text-only search; without a text: image-only.",
                             examples=["make the circle red"])
    k: int = Field(10, description="Number of results (1 to min(--max-k, gallery size)).")
    model: str | None = Field(None, description="One of the loaded models (GET /healthz lists them); "
                                                "default: the first one.")
    offset: int = Field(0, description="Results skipped before the first returned: page past --max-k.")
    filter: dict[str, Any] | None = Field(None, description="Metadata conditions {field: value or [values]}, "
                                                           "applied before top-k.", examples=[{"category": "dress"}])
    dedupe: bool | float | None = Field(None, description="true: drop hits whose cosine to a higher hit is at least "
                                                          "the server's threshold; a number: that threshold.")


class SearchForm(SearchJSON):
    """POST /search as multipart/form-data: as the JSON body, plus ``image``, an uploaded file."""

    image: bytes | None = Field(None, description="The reference image, uploaded as a file part.")


class RefineRequest(BaseModel):
    """POST /refine: continue a session; a result shown in it becomes the next reference."""

    session: str = Field(..., description="The session id a /search answered.")
    choice: str = Field(..., description="The id of a result shown in this session: the next reference.")
    text: str = Field(..., description="The next modification text.")
    k: int | None = Field(None, description="Number of results; default: the previous turn's.")
    model: str | None = Field(None, description="Model; default: the previous turn's.")


class Result(BaseModel):
    rank: int
    score: float = Field(..., description="Cosine similarity between the query and the image.")
    id: str
    path: str | None = Field(None, description="The image's file on the server (only with --show-paths).")
    metadata: dict[str, Any] | None = Field(None, description="The image's metadata fields (indexes with a table).")
    thumbnail: str = Field(..., description="URL of its thumbnail, relative to the API root.")


class ReferenceInfo(BaseModel):
    kind: str = Field(..., description="upload, base64 or id")
    id: str | None = None


class Timings(BaseModel):
    decode: float
    image_encoder: float
    mapping_network: float | None = Field(None, description="null for a model without a mapping network")
    text_encoder: float
    search: float
    generation: float | None = Field(None, description="captions/edits made for a language-model method; null otherwise")
    total: float


class ResultSummary(BaseModel):
    id: str
    score: float


class TurnSummary(BaseModel):
    turn: int
    reference: ReferenceInfo | None
    text: str | None
    k: int
    model: str
    results: list[ResultSummary]


class TurnResponse(BaseModel):
    session: str = Field(..., description="Pass it to /refine to continue.")
    turn: int
    model: str
    k: int
    text: str | None
    query: str = Field(..., description="composed, text (no image) or image (no text)")
    offset: int
    dropped: dict[str, int] = Field(..., description="Hits left out: missing_files, duplicates.")
    reference: ReferenceInfo | None
    index_generation: int
    results: list[Result]
    timings_ms: Timings = Field(..., description="Milliseconds per stage of this request.")
    turns: list[TurnSummary] = Field(..., description="The session's turns so far, this one last.")


class ErrorBody(BaseModel):
    field: str = Field(..., description="The request field at fault (body for the body as a whole).")
    message: str
    status: int


class ErrorResponse(BaseModel):
    error: ErrorBody


def request_body(*models: tuple[str, type[BaseModel]]) -> dict:
    """An OpenAPI requestBody listing one schema per content type."""
    return {"requestBody": {"required": True, "content": {
        ctype: {"schema": model.model_json_schema()} for ctype, model in models}}}


class SearchQuery(SearchJSON):
    """One query of POST /search/batch (or a /search JSON body): all of its fields but the image upload."""


class BatchRequest(BaseModel):
    """POST /search/batch: several /search JSON bodies, answered in order, without sessions."""

    queries: list[SearchQuery] = Field(..., description="1 to --max-batch queries.")
