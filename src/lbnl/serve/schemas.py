"""Request and response bodies: the Jina and Cohere rerank APIs, TEI's ``/rerank`` and vLLM's ``/score``.

A rerank request is ``{model, query, documents, top_n, return_documents, rank_fields,
max_tokens_per_doc}``; other fields (Cohere's ``max_chunks_per_doc``...) are ignored so existing
clients work unchanged.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel, ConfigDict, Field, PlainValidator, StrictBool, StrictInt, StrictStr, ValidationInfo, field_validator,
)
from pydantic_core import PydanticCustomError

from ..prompt import sanitize
from ..truncation import find_lone_surrogate


class TextDocument(BaseModel):
    """A document given as an object: only ``text`` is read."""

    model_config = ConfigDict(extra="ignore")

    text: StrictStr


def check_unicode(value: str) -> str:
    """Refuse a string holding a lone surrogate (JSON allows ``"\\ud800"``; no tokenizer can encode it)."""
    at = find_lone_surrogate(value)
    if at is not None:
        raise PydanticCustomError(
            "lone_surrogate", "contains a lone surrogate (U+{code}) at character {at}, which is not valid Unicode",
            {"code": f"{ord(value[at]):04X}", "at": at})
    return value


def rank_text(document: dict[str, Any], rank_fields: list[str]) -> str:
    """Cohere v1's text of a structured document: ``field: value`` lines in ``rank_fields`` order.

    With only ``["text"]`` it is the ``text`` value itself. Fields the document lacks are skipped.
    """
    if rank_fields == ["text"]:
        value = document.get("text")
        if not isinstance(value, str):
            raise PydanticCustomError("document_type", "must be a string or an object with a string 'text' field")
        return value
    lines = []
    for field in rank_fields:
        if field not in document:
            continue
        value = document[field]
        if not isinstance(value, str):
            raise PydanticCustomError("document_field", "field '{field}' must be a string", {"field": field})
        lines.append(f"{field}: {value}")
    if not lines:
        raise PydanticCustomError("document_fields", "has none of the rank_fields {fields}",
                                  {"fields": ", ".join(rank_fields)})
    return "\n".join(lines)


def _document(value: Any, info: ValidationInfo) -> str | dict[str, Any]:
    if isinstance(value, str):
        return check_unicode(value)
    if isinstance(value, TextDocument):
        value = value.model_dump()
    if isinstance(value, dict):
        check_unicode(rank_text(value, (info.data or {}).get("rank_fields") or ["text"]))
        return value
    raise PydanticCustomError("document_type", "must be a string or an object with a string 'text' field")


DocumentIn = Annotated[str | dict[str, Any],
                       PlainValidator(_document, json_schema_input_type=str | TextDocument | dict[str, str])]


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
    rank_fields: list[StrictStr] | None = Field(
        None, min_length=1,
        description="Cohere v1: the fields of structured documents to rank on, in order; each document becomes "
                    "'field: value' lines (default: the 'text' field)")
    query: StrictStr = Field(
        description="the search query; must hold a non-blank character once the special-token strings "
                    "(<|embed_token|>, <|rerank_token|>) are removed",
        json_schema_extra={"minLength": 1, "pattern": "\\S"})
    documents: list[DocumentIn] = Field(
        description="strings or {\"text\": ...} objects; an empty list gives no results")
    top_n: StrictInt | None = Field(None, ge=1, description="return only the best top_n results (default: all)")
    return_documents: StrictBool | None = Field(
        None, description="echo each document (default: true as Jina on /v1/rerank and /rerank; false as Cohere on "
                          "/v2/rerank and for the Cohere SDK or a request with rank_fields)")
    max_tokens_per_doc: StrictInt | None = Field(
        None, ge=1, description="Cohere v2: tokens kept per document; never more than the server's --max-doc-length")

    @field_validator("query")
    @classmethod
    def _query_not_empty(cls, value: str) -> str:
        check_unicode(value)
        if not sanitize(value).strip():
            raise PydanticCustomError("query_empty", "must not be empty" + (
                " (special-token strings such as <|embed_token|> are removed)" if value.strip() else ""))
        return value

    def texts(self) -> list[str]:
        """The documents as the text the model reads, in input order."""
        fields = self.rank_fields or ["text"]
        return [rank_text({"text": d} if isinstance(d, str) else d, fields) for d in self.documents]

    def echoed(self, index: int, text: str) -> dict[str, Any]:
        """The document as a result carries it: ``{"text": ...}``, or the whole object with ``rank_fields``."""
        doc = self.documents[index]
        if self.rank_fields and isinstance(doc, dict):
            return doc
        return {"text": text}


class ResultDocument(BaseModel):
    model_config = ConfigDict(extra="allow")

    text: str | None = None


class RerankResultOut(BaseModel):
    index: int = Field(description="position of the document in the request")
    relevance_score: float = Field(description="the model's score, higher is more relevant (see docs/serve.md)")
    document: dict[str, Any] | None = Field(
        None, description="present when return_documents is true: {\"text\": ...}, or the document object as "
                          "sent when rank_fields is given")


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


class TeiRerankRequest(BaseModel):
    """Text Embeddings Inference's ``POST /rerank`` body (told apart from the Jina/Cohere shape by ``texts``)."""

    model_config = ConfigDict(extra="ignore")

    query: StrictStr = Field(description="the search query; must hold a non-blank character")
    texts: list[StrictStr] = Field(description="the texts to rank")
    raw_scores: StrictBool = Field(False, description="accepted; lbnl's scores are the same either way")
    return_text: StrictBool = Field(False, description="echo each text")
    truncate: StrictBool | None = Field(None, description="accepted; texts are always cut to the server's limit")
    truncation_direction: Literal["right", "Right", "left", "Left"] = Field(
        "right", description="only right truncation is supported")

    _query = field_validator("query")(RerankRequest._query_not_empty.__func__)  # type: ignore[attr-defined]

    @field_validator("texts")
    @classmethod
    def _texts_unicode(cls, value: list[str]) -> list[str]:
        for text in value:
            check_unicode(text)
        return value

    @field_validator("truncation_direction")
    @classmethod
    def _right_only(cls, value: str) -> str:
        if value.lower() != "right":
            raise PydanticCustomError("truncation_direction", "only 'right' truncation is supported")
        return value


class TeiRank(BaseModel):
    index: int
    score: float
    text: str | None = None


def _one_or_many(value: Any) -> str | list[str]:
    if isinstance(value, str):
        return check_unicode(value)
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return [check_unicode(v) for v in value]
    raise PydanticCustomError("text_type", "must be a string or a non-empty list of strings")


OneOrMany = Annotated[str | list[str], PlainValidator(_one_or_many, json_schema_input_type=str | list[str])]


class ScoreRequest(BaseModel):
    """vLLM's ``POST /score`` (and ``/v1/score``): ``text_1`` the query, ``text_2`` the documents.

    One ``text_1`` against any number of ``text_2`` ranks them together, as one rerank request;
    equal-length lists score pair by pair (each document alone with its query).
    """

    model_config = ConfigDict(extra="ignore")

    model: StrictStr | None = Field(None, description="accepted for client compatibility; the served model answers")
    text_1: OneOrMany = Field(description="the query, or one query per text_2")
    text_2: OneOrMany = Field(description="the documents")
    truncate_prompt_tokens: StrictInt | None = Field(None, ge=1, description="tokens kept per document (at most the "
                                                                              "server's --max-doc-length)")

    def pairs(self) -> list[tuple[str, list[str]]]:
        """``(query, documents)`` jobs; raises ``ValueError`` for lists of different lengths."""
        queries = [self.text_1] if isinstance(self.text_1, str) else self.text_1
        docs = [self.text_2] if isinstance(self.text_2, str) else self.text_2
        if len(queries) == 1:
            return [(queries[0], docs)]
        if len(queries) != len(docs):
            raise ValueError(f"text_1 has {len(queries)} texts and text_2 {len(docs)}: give one text_1, or as many as "
                             "text_2")
        return [(q, [d]) for q, d in zip(queries, docs)]


class ScoreData(BaseModel):
    index: int
    object: Literal["score"] = "score"
    score: float


class ScoreUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int
    completion_tokens: int = 0


class ScoreResponse(BaseModel):
    id: str
    object: Literal["list"] = "list"
    created: int
    model: str
    data: list[ScoreData]
    usage: ScoreUsage
