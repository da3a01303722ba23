"""Request and response bodies of the rerank API, shaped like the Jina and Cohere rerank APIs.

A request is ``{model, query, documents, top_n, return_documents}``; unknown fields (Cohere's
``rank_fields``, ``max_chunks_per_doc``...) are ignored so existing clients work unchanged.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, StrictBool, StrictInt, StrictStr, field_validator
from pydantic_core import PydanticCustomError


class TextDocument(BaseModel):
    """A document given as an object: only ``text`` is read."""

    model_config = ConfigDict(extra="ignore")

    text: StrictStr


def _document(value: Any) -> str | TextDocument:
    if isinstance(value, str):
        return value
    if isinstance(value, TextDocument):
        return value
    if isinstance(value, dict) and isinstance(value.get("text"), str):
        return TextDocument(text=value["text"])
    raise PydanticCustomError("document_type", "must be a string or an object with a string 'text' field")


DocumentIn = Annotated[str | TextDocument, PlainValidator(_document, json_schema_input_type=str | TextDocument)]


class RerankRequest(BaseModel):
    """``POST /v1/rerank``: rank ``documents`` by relevance to ``query``."""

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={"examples": [{
            "model": "lbnl", "query": "What are the health benefits of green tea?",
            "documents": ["Green tea catechins reduce inflammation.", {"text": "Basketball is popular in the US."}],
            "top_n": 1, "return_documents": True,
        }]},
    )

    model: StrictStr | None = Field(None, description="accepted for client compatibility; the served model answers")
    query: StrictStr = Field(description="the search query; must not be empty")
    documents: list[DocumentIn] = Field(
        description="strings or {\"text\": ...} objects; an empty list gives no results")
    top_n: StrictInt | None = Field(None, ge=1, description="return only the best top_n results (default: all)")
    return_documents: StrictBool | None = Field(True, description="echo each document's text (default true, as Jina)")

    @field_validator("query")
    @classmethod
    def _query_not_empty(cls, value: str) -> str:
        if not value.strip():
            raise PydanticCustomError("query_empty", "must not be empty")
        return value

    def texts(self) -> list[str]:
        """The documents as plain strings, in input order."""
        return [d if isinstance(d, str) else d.text for d in self.documents]


class ResultDocument(BaseModel):
    text: str


class RerankResultOut(BaseModel):
    index: int = Field(description="position of the document in the request")
    relevance_score: float = Field(description="cosine similarity in [-1, 1]; higher is more relevant")
    document: ResultDocument | None = Field(None, description="present when return_documents is true")


class Usage(BaseModel):
    total_tokens: int = Field(description="query tokens plus document tokens, after truncation")
    truncated_documents: int = Field(0, description="documents cut to the server's maximum document length")
    query_truncated: bool = Field(False, description="whether the query was cut to the maximum query length")


class BilledUnits(BaseModel):
    search_units: int = Field(description="Cohere's unit: one query with up to 100 documents")


class Meta(BaseModel):
    billed_units: BilledUnits


class RerankResponse(BaseModel):
    id: str
    model: str
    results: list[RerankResultOut]
    usage: Usage
    meta: Meta


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "lbnl"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    model: str
    queue_depth: int


class FieldError(BaseModel):
    field: str
    message: str


class ErrorResponse(BaseModel):
    """Every 4xx/5xx answer: ``detail`` is a sentence for people; ``errors`` names fields (422 only)."""

    detail: str
    errors: list[FieldError] | None = None
