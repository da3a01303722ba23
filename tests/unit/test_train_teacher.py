"""The distillation teacher: mean-pooled cosines of a real (tiny, random) BERT encoder, cached per text."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lbnl.errors import InvalidInputError
from lbnl.testing.checkpoints import build_tiny_teacher
from lbnl.train.teacher import EmbeddingTeacher


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_teacher(tmp_path_factory.mktemp("teacher"))


def test_scores_are_cosines_of_mean_pooled_embeddings(teacher_dir: Path) -> None:
    teacher = EmbeddingTeacher(teacher_dir, batch_size=2)
    docs = ["zebra stripes", "a long document about horses and their many colours", "zebra"]
    scores = teacher.scores("zebra", docs)
    enc = teacher.tokenizer(["zebra", *docs], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = teacher.model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).float()
    pooled = F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    assert torch.allclose(scores, pooled[1:] @ pooled[0], atol=1e-5)
    assert scores[2].item() == pytest.approx(1.0, abs=1e-5)          # the same text as the query


def test_embeddings_are_cached_per_text(teacher_dir: Path) -> None:
    teacher = EmbeddingTeacher(teacher_dir, cache_size=3)
    teacher.scores("q", ["a", "b"])
    assert teacher.texts_encoded == 3
    teacher.scores("q", ["b", "a", "a"])
    assert teacher.texts_encoded == 3                                  # all cached
    teacher.scores("r", ["c"])                                         # evicts the least recently used ("q")
    assert teacher.texts_encoded == 5 and "q" not in teacher._cache and len(teacher._cache) == 3
    assert teacher.scores("q", []).numel() == 0


def test_one_call_may_hold_more_texts_than_the_cache(teacher_dir: Path) -> None:
    small, large = EmbeddingTeacher(teacher_dir, cache_size=1), EmbeddingTeacher(teacher_dir)
    assert torch.equal(small.scores("q", ["a", "b", "c"]), large.scores("q", ["a", "b", "c"]))
    assert len(small._cache) == 1


def test_not_a_model_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="teacher.py fetch"):
        EmbeddingTeacher(tmp_path)


def test_distill_needs_a_teacher() -> None:
    from lbnl.train.config import load_config

    base = ["model.base=x", "data.path=x", "run.output_dir=x"]
    with pytest.raises(InvalidInputError, match="loss.teacher"):
        load_config(None, [*base, "loss.distill=1"])
    with pytest.raises(InvalidInputError, match="teacher_temperature"):
        load_config(None, [*base, "loss.distill=1", "loss.teacher=t", "loss.teacher_temperature=0"])
    assert load_config(None, [*base, "loss.distill=0.5", "loss.teacher=t"]).loss.distill == 0.5
