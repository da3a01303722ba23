"""The server's limits, timeouts and batching settings (``lbnl serve`` flags map onto them)."""

from __future__ import annotations

from dataclasses import dataclass

from ..defaults import MAX_BATCH_TOKENS, MAX_DOC_LENGTH, MAX_QUERY_LENGTH
from ..errors import InvalidInputError


@dataclass(frozen=True)
class ServeSettings:
    """Server limits and batching; the defaults are the ``lbnl serve`` defaults.

    Args:
        model_name: name shown in responses and ``/v1/models`` (default: the reranker's name).
        max_batch_tokens: token budget of one batch (estimated query and document tokens), also
            the reranker's padded tokens per forward.
        batch_wait_ms: how long the oldest queued request waits for companions.
        max_queue: requests allowed to wait for the model; more get 503 with ``Retry-After``.
        max_documents: documents allowed in one request.
        max_body_bytes: request bodies larger than this get 413.
        request_timeout: seconds from a request's arrival at the queue to its answer; later is 504.
        api_key: when set, every non-probe endpoint needs ``Authorization: Bearer <api_key>``.
        max_query_length: query tokens kept (longer queries are truncated as the model defines).
        max_doc_length: tokens kept per document.
        max_request_tokens: query plus document tokens (after truncation) allowed in one request;
            more get 413. Bounds the model time one request can take.
        header_timeout: seconds a connection may take to send a request head (after connecting or
            after its previous response); then it is closed.
        body_timeout: seconds from a request's head to the end of its body; later gets 408.
        keep_alive_timeout: seconds an idle keep-alive connection stays open.
        batch_delay_ms: artificial sleep before every batch, to test overload and shutdown; keep 0.
    """

    model_name: str | None = None
    max_batch_tokens: int = MAX_BATCH_TOKENS
    batch_wait_ms: float = 5.0
    max_queue: int = 64
    max_documents: int = 1000
    max_body_bytes: int = 16 * 2**20
    request_timeout: float = 60.0
    api_key: str | None = None
    max_query_length: int = MAX_QUERY_LENGTH
    max_doc_length: int = MAX_DOC_LENGTH
    max_request_tokens: int = 262144
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    keep_alive_timeout: float = 5.0
    batch_delay_ms: float = 0.0

    def check(self) -> None:
        """Raise :class:`~lbnl.errors.InvalidInputError` naming the first impossible setting."""
        for name in ("max_batch_tokens", "max_queue", "max_documents", "max_body_bytes", "max_query_length",
                     "max_doc_length", "max_request_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidInputError(f"{name.replace('_', '-')} must be a positive integer, got {value!r}")
        for name in ("batch_wait_ms", "batch_delay_ms"):
            if not getattr(self, name) >= 0:
                raise InvalidInputError(f"{name.replace('_', '-')} must be zero or more, got {getattr(self, name)!r}")
        for name in ("request_timeout", "header_timeout", "body_timeout", "keep_alive_timeout"):
            if not getattr(self, name) > 0:
                raise InvalidInputError(f"{name.replace('_', '-')} must be positive, got {getattr(self, name)!r}")
        if self.api_key is not None and not self.api_key:
            raise InvalidInputError("the API key is empty; give a key, or none to serve without one")
