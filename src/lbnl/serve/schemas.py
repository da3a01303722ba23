"""Request and response bodies of the rerank API, shaped like the Jina and Cohere rerank APIs.

A request is ``{model, query, documents, top_n, return_documents}``; unknown fields (Cohere's
``rank_fields``, ``max_chunks_per_doc``...) are ignored so existing clients work unchanged.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, StrictBool, StrictInt, StrictStr, field_validator
from pydantic_core import PydanticCustomError

from ..prompt import sanitize


class TextDocument(BaseModel):
    """A document given as an object: only ``text`` is read."""

    model_config = ConfigDict(extra="ignore")

    text: StrictStr


_SURROGATE = re.compile("[\ud800-\udfff]")


def check_unicode(value: str) -> str:
    """Refuse a string holding a lone surrogate (JSON allows ``"\\ud800"``; no tokenizer can encode it)."""
    m = _SURROGATE.search(value)
    if m:
        raise PydanticCustomError(
            "lone_surrogate", "contains a lone surrogate (U+{code}) at character {at}, which is not valid Unicode",
            {"code": f"{ord(m.group()):04X}", "at": m.start()})
    return value


def _document(value: Any) -> str | TextDocument:
    if isinstance(value, str):
        return check_unicode(value)
    if isinstance(value, TextDocument):
        check_unicode(value.text)
        return value
    if isinstance(value, dict) and isinstance(value.get("text"), str):
        return TextDocument(text=check_unicode(value["text"]))
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
    query: StrictStr = Field(
        description="the search query; must hold a non-blank character once the special-token strings "
                    "(<|embed_token|>, <|rerank_token|>) are removed",
        json_schema_extra={"minLength": 1, "pattern": "\\S"})
    documents: list[DocumentIn] = Field(
        description="strings or {\"text\": ...} objects; an empty list gives no results")
    top_n: StrictInt | None = Field(None, ge=1, description="return only the best top_n results (default: all)")
    return_documents: StrictBool | None = Field(True, description="echo each document's text (default true, as Jina)")

    @field_validator("query")
    @classmethod
    def _query_not_empty(cls, value: str) -> str:
        check_unicode(value)
        if not sanitize(value).strip():
            raise PydanticCustomError("query_empty", "must not be empty" + (
                " (special-token strings such as <|embed_token|> are removed)" if value.strip() else ""))
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
    status: Literal["ok", "error"] = Field("ok", description="'error' (with HTTP 503) once the model misbehaved")
    model: str
    queue_depth: int
    detail: str | None = Field(None, description="what went wrong, when status is 'error'")


class FieldError(BaseModel):
    field: str
    message: str


class ErrorResponse(BaseModel):
    """Every 4xx/5xx answer: ``detail`` is a sentence for people; ``errors`` names fields (422 only)."""

    detail: str
    errors: list[FieldError] | None = None
