"""The built-in general-text model (issue 16; lbnl-small-v3): obvious pairs across topics, right in both
orders and scored alone, scored as the shipped checkpoint says (its coverage fusion). Slow: it merges the
real model (base from the package registry, cached after the first run).
"""

from __future__ import annotations

import pytest

from lbnl import FusedReranker, Reranker
from lbnl.cli.common import read_documents
from lbnl.cli.demo import QUERY, SAMPLE
from lbnl.defaults import DEFAULT_MODEL_NAME

# (query, relevant, irrelevant)
PAIRS = [
    ("What is the capital of France?", "Paris is the capital of France.", "Bananas are yellow."),
    ("green tea", "Green tea catechins.", "Basketball."),
    ("How do I sort a list in Python?", "Use sorted() or list.sort() to sort a list in Python.",
     "The Eiffel Tower is in Paris."),
    ("Who wrote Romeo and Juliet?", "Romeo and Juliet is a tragedy written by William Shakespeare.",
     "Photosynthesis converts light into chemical energy."),
    ("What causes rain?", "Rain falls when water vapour in clouds condenses into drops heavy enough to fall.",
     "The stock market closed higher on Friday."),
    ("boiling point of water", "Water boils at 100 degrees Celsius at sea level.", "Dogs are loyal companions."),
    ("symptoms of the flu", "Influenza causes fever, cough, sore throat and muscle aches.",
     "The guitar has six strings."),
    ("how to change a flat tyre", "To change a flat tyre, loosen the nuts, jack up the car and swap the wheel.",
     "Mozart composed more than 600 works."),
    ("largest planet in the solar system", "Jupiter is the largest planet in our solar system.",
     "A chocolate cake needs flour, sugar and cocoa."),
    ("What does a CPU do?", "The CPU executes the instructions of computer programs.",
     "The Amazon river flows through Brazil."),
    ("When did World War II end?", "World War II ended in 1945.", "Tomatoes are rich in vitamin C."),
    ("what is photosynthesis", "Photosynthesis is how plants turn sunlight, water and carbon dioxide into sugar.",
     "The Beatles were a band from Liverpool."),
    ("How many legs does a spider have?", "Spiders have eight legs.", "Paris is the capital of France."),
    ("how to lower blood pressure", "Less salt, regular exercise and losing weight lower blood pressure.",
     "The Pacific is the largest ocean on Earth."),
]


NAME = DEFAULT_MODEL_NAME                      # lbnl-small-v3: what newcomers meet


@pytest.fixture(scope="module")
def model():
    assert NAME == "lbnl-small-v3"
    reranker = Reranker.from_pretrained(device="cpu")
    assert isinstance(reranker, FusedReranker) and reranker.fusion.transform == "coverage"
    return reranker


def _scores(reranker, query: str, docs: list[str]) -> list[float]:
    return reranker.score(query, docs)


@pytest.mark.slow
@pytest.mark.parametrize("query,relevant,irrelevant", PAIRS)
def test_obvious_pair_is_right_in_both_orders(model, query: str, relevant: str, irrelevant: str) -> None:
    forward = _scores(model, query, [relevant, irrelevant])
    reverse = _scores(model, query, [irrelevant, relevant])
    assert forward[0] > forward[1], (query, forward)
    assert reverse[1] > reverse[0], (query, reverse)


@pytest.mark.slow
@pytest.mark.parametrize("query,relevant,irrelevant", PAIRS)
def test_obvious_pair_is_separated_when_scored_alone(model, query: str, relevant: str, irrelevant: str) -> None:
    assert _scores(model, query, [relevant])[0] > _scores(model, query, [irrelevant])[0]


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="known gap (#16 open): v3 (like v2) ranks the brewing document third, "
                                       "above the meta-analysis; a pass means the gap closed and this mark must go")
def test_green_tea_health_documents_rank_first_on_the_sample(model) -> None:
    _health_documents_first(model)


@pytest.mark.slow
def test_symmetric_reading_ranks_the_health_documents_first(model) -> None:
    """With symmetric=True (both orders averaged) the shipped model puts the three health documents first."""
    both = Reranker.from_pretrained(device="cpu", symmetric=True)
    assert both.reranker.symmetric
    _health_documents_first(both)


def _health_documents_first(reranker) -> None:
    docs = read_documents(str(SAMPLE))
    scores = _scores(reranker, QUERY, docs)
    order = sorted(range(len(docs)), key=lambda i: -scores[i])
    health = {i for i, d in enumerate(docs) if any(w in d for w in ("catechins", "cohort", "meta-analysis"))}
    others = {i for i, d in enumerate(docs) if any(w in d for w in ("brew", "Coffee", "Basketball", "World Cup"))}
    assert len(health) == 3 and len(others) == 4
    assert max(order.index(i) for i in health) < min(order.index(i) for i in others), [docs[i] for i in order]
