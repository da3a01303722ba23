"""BM25 (bm25s) with one parameter set: the first stage over a corpus (cached on disk so a rerun is
instant), training's hard-negative mining, and the candidate BM25 that lexical fusion computes over a
request's own documents.

Lucene BM25 with Anserini's k1=0.9, b=0.4, English stopwords and Snowball (PyStemmer) stemming
over ``title + " " + text``: the setup behind the published SciFact BM25 figures.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from ..errors import InvalidInputError
from .beir import BeirDataset

Hit = tuple[str, float]
#: Query id -> (document id, score) pairs, best first.
Hits = dict[str, list[Hit]]

DEFAULT_TOP_K = 100


def default_cache_dir() -> Path:
    """``$LBNL_CACHE/bm25`` when set, else ``~/.cache/lbnl/bm25``."""
    base = os.environ.get("LBNL_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "lbnl") / "bm25"


@dataclass(frozen=True)
class BM25Params:
    """Everything that changes BM25 scores; part of every cache key."""

    method: str = "lucene"
    k1: float = 0.9
    b: float = 0.4
    stopwords: str = "en"
    stemmer: str = "english"

    def check(self) -> None:
        if self.k1 < 0 or not 0 <= self.b <= 1:
            raise InvalidInputError(f"BM25 needs k1 >= 0 and 0 <= b <= 1, got k1={self.k1}, b={self.b}")


def digest(payload: Any) -> str:
    """A short stable hash of a JSON-serialisable value, for cache and resume keys."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


class BM25Index:
    """A bm25s index over documents identified by id.

    Build with :meth:`build` (any texts) or :meth:`for_dataset` (a BEIR corpus, cached on disk);
    query with :meth:`search`.
    """

    def __init__(self, retriever: Any, doc_ids: list[str], params: BM25Params):
        self.retriever = retriever
        self.doc_ids = doc_ids
        self.params = params
        import Stemmer

        self._stemmer = Stemmer.Stemmer(params.stemmer)

    @classmethod
    def build(cls, doc_ids: Sequence[str], texts: Sequence[str], params: BM25Params = BM25Params(),
              progress: bool = False) -> "BM25Index":
        """Index ``texts`` (aligned with ``doc_ids``).

        Args:
            doc_ids: one id per text; search results carry them.
            texts: the document strings.
            params: BM25 variant, k1, b, stopwords and stemmer.
            progress: show bm25s progress bars.
        """
        import bm25s
        import Stemmer

        params.check()
        if len(doc_ids) != len(texts) or not texts:
            raise InvalidInputError("BM25 needs a non-empty list of texts and one id per text")
        tokens = bm25s.tokenize(list(texts), stopwords=params.stopwords, stemmer=Stemmer.Stemmer(params.stemmer),
                                show_progress=progress)
        retriever = bm25s.BM25(method=params.method, k1=params.k1, b=params.b)
        retriever.index(tokens, show_progress=progress)
        return cls(retriever, [str(d) for d in doc_ids], params)

    @classmethod
    def for_dataset(cls, dataset: BeirDataset, params: BM25Params = BM25Params(),
                    cache_dir: str | os.PathLike[str] | None = None, progress: bool = True) -> "BM25Index":
        """The index of ``dataset``'s corpus, loaded from ``cache_dir`` or built and saved there.

        The cache key is the corpus file (path, size, mtime), ``params`` and the bm25s version.
        """
        import bm25s

        params.check()
        directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        key = digest({"corpus": dataset.fingerprint("corpus"), "params": asdict(params),
                       "bm25s": bm25s.__version__, "document": "title+text"})
        path = directory / f"index-{dataset.name}-{key}"
        if (path / "doc_ids.json").is_file():
            retriever = bm25s.BM25.load(str(path), show_progress=False)
            doc_ids = json.loads((path / "doc_ids.json").read_text())
            return cls(retriever, doc_ids, params)
        ids = list(dataset.corpus)
        index = cls.build(ids, [dataset.document_text(d) for d in ids], params, progress=progress)
        directory.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=directory, prefix=".tmp-"))
        try:
            index.retriever.save(str(tmp), show_progress=False)
            (tmp / "doc_ids.json").write_text(json.dumps(ids))
            if not path.exists():
                os.replace(tmp, path)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return index

    def search(self, queries: Sequence[str], k: int = DEFAULT_TOP_K,
               exclude: Sequence[str | None] | None = None) -> list[list[Hit]]:
        """Top-``k`` ``(doc_id, score)`` per query, best first; ties go to the earlier document.

        Args:
            queries: query texts.
            k: hits per query (fewer when fewer documents share a term with the query).
            exclude: optional id per query to drop from its hits (BEIR drops a document whose
                id equals the query id); ``k`` hits are still returned when available.
        """
        import bm25s
        import numpy as np

        if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
            raise InvalidInputError(f"k must be a positive integer, got {k!r}")
        if exclude is not None and len(exclude) != len(queries):
            raise InvalidInputError("exclude needs one entry per query")
        if not queries:
            return []
        tokens = bm25s.tokenize(list(queries), stopwords=self.params.stopwords, stemmer=self._stemmer,
                                return_ids=False, show_progress=False)
        depth = min(k + (exclude is not None), len(self.doc_ids))
        docs, scores = self.retriever.retrieve(tokens, k=depth, show_progress=False)
        results: list[list[Hit]] = []
        for row, (indices, values) in enumerate(zip(np.asarray(docs), np.asarray(scores))):
            order = sorted(range(len(indices)), key=lambda i: (-float(values[i]), int(indices[i])))
            skip = exclude[row] if exclude is not None else None
            hits = [(self.doc_ids[int(indices[i])], float(values[i])) for i in order if values[i] > 0]
            results.append([h for h in hits if h[0] != skip][:k])
        return results


def first_stage_hits(dataset: BeirDataset, query_ids: Sequence[str] | None = None, k: int = DEFAULT_TOP_K,
                     params: BM25Params = BM25Params(), cache_dir: str | os.PathLike[str] | None = None,
                     progress: bool = True) -> Hits:
    """BM25 top-``k`` of the split's queries, computed once and cached; a hit equal to its query id is dropped.

    Args:
        dataset: the loaded BEIR split.
        query_ids: the queries wanted (default: all judged queries of the split).
        k: hits per query.
        params: BM25 parameters.
        cache_dir: cache directory (default :func:`default_cache_dir`).
        progress: progress bars while building the index.
    """
    import bm25s

    wanted = list(dataset.query_ids if query_ids is None else query_ids)
    missing = [q for q in wanted if q not in dataset.queries]
    if missing:
        raise InvalidInputError(f"unknown query ids: {', '.join(missing[:5])}")
    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = digest({"files": dataset.fingerprint("corpus", "queries", "qrels"), "split": dataset.split, "k": k,
                   "params": asdict(params), "bm25s": bm25s.__version__, "document": "title+text",
                   "drop_self": True})
    path = directory / f"hits-{dataset.name}-{dataset.split}-{key}.json"
    cached: Hits = {}
    if path.is_file():
        try:
            cached = {q: [(d, s) for d, s in hits] for q, hits in json.loads(path.read_text()).items()}
        except (json.JSONDecodeError, ValueError, TypeError):
            cached = {}
    todo = [q for q in dict.fromkeys(dataset.query_ids + wanted) if q not in cached]
    if todo:
        index = BM25Index.for_dataset(dataset, params, directory, progress=progress)
        found = index.search([dataset.queries[q] for q in todo], k=k, exclude=todo)
        cached.update(zip(todo, found))
        directory.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(cached))
        os.replace(tmp, path)
    return {q: cached[q] for q in wanted}


_local = threading.local()


def _thread_stemmer(name: str) -> Any:
    """One Snowball stemmer per thread and language (PyStemmer objects are not thread-safe)."""
    stemmers = _local.__dict__.setdefault("stemmers", {})
    if name not in stemmers:
        import Stemmer

        stemmers[name] = Stemmer.Stemmer(name)
    return stemmers[name]


def query_term_coverage(query: str, texts: Sequence[str], params: BM25Params = BM25Params()) -> list[float]:
    """Fraction of the query's distinct terms that occur in each text, in [0, 1].

    Terms as BM25 sees them (stopwords removed, stemmed). A text's value depends on the query and that
    text only, never on the other texts, so it means the same in every request; a query without any
    term gives 0 everywhere.
    """
    import bm25s

    if not texts:
        return []
    tokens = bm25s.tokenize([query, *texts], stopwords=params.stopwords, stemmer=_thread_stemmer(params.stemmer),
                            return_ids=False, show_progress=False)
    terms = set(tokens[0])
    if not terms:
        return [0.0] * len(texts)
    return [len(terms & set(doc)) / len(terms) for doc in tokens[1:]]


def candidate_bm25(query: str, texts: Sequence[str], params: BM25Params = BM25Params()) -> list[float]:
    """BM25 of ``query`` against an index of ``texts`` alone (term statistics from these texts only).

    Same variant and parameters as the first stage. Texts without any query term score 0.
    """
    import bm25s

    if not texts:
        return []
    params.check()
    stemmer = _thread_stemmer(params.stemmer)
    corpus = bm25s.tokenize(list(texts), stopwords=params.stopwords, stemmer=stemmer, show_progress=False)
    terms = bm25s.tokenize([query], stopwords=params.stopwords, stemmer=stemmer, return_ids=False,
                           show_progress=False)[0]
    if not terms or not any(corpus.ids):
        return [0.0] * len(texts)
    index = bm25s.BM25(method=params.method, k1=params.k1, b=params.b)
    index.index(corpus, show_progress=False)
    return [float(s) for s in index.get_scores(terms)]
