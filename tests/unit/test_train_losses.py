"""The four LBNL objectives against hand-computed values on tiny tensors, and their directions."""

from __future__ import annotations

import math

import pytest
import torch

from lbnl.train import losses as L

E0, E1 = [1.0, 0.0], [0.0, 1.0]
NEG_E0 = [-1.0, 0.0]


def t(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float32)


def test_info_nce_hand_value_and_mask() -> None:
    logits = t([[1.0, 0.0, 0.0], [0.0, 2.0, 5.0]])
    expected_0 = -math.log(math.e / (math.e + 2))
    expected_1 = -math.log(1 / (1 + math.e**2 + math.e**5))
    assert L.info_nce(logits).item() == pytest.approx((expected_0 + expected_1) / 2, rel=1e-6)
    mask = torch.tensor([[True, True, True], [True, True, False]])
    expected_1m = -math.log(1 / (1 + math.e**2))
    assert L.info_nce(logits, mask).item() == pytest.approx((expected_0 + expected_1m) / 2, rel=1e-6)


def test_rank_loss_hand_value() -> None:
    # cosines of the query (1, 0) with the positive (2, 0), and negatives (0, 3) and (-1, 0): 1, 0, -1.
    q, docs, tau = t([E0]), t([[[2.0, 0.0], [0.0, 3.0], NEG_E0]]), 0.5
    expected = -math.log(math.exp(2) / (math.exp(2) + 1 + math.exp(-2)))
    assert L.rank_loss(q, docs, tau).item() == pytest.approx(expected, rel=1e-6)
    # one query per document (pointwise layout) with equal vectors is the same loss
    assert L.rank_loss(q[:, None, :].expand(1, 3, 2), docs, tau).item() == pytest.approx(expected, rel=1e-6)


def test_rank_loss_in_batch_negatives_hand_value() -> None:
    tau = 1.0
    q = t([E0, E1])
    docs = t([[E0, E1], [E1, NEG_E0]])
    # list 0: own logits [1, 0], others' documents E1 (0) and -E0 (-1)
    l0 = -math.log(math.e / (math.e + 1 + 1 + math.exp(-1)))
    # list 1: own logits [1, 0], others' documents E0 (0) and E1 (1)
    l1 = -math.log(math.e / (math.e + 1 + 1 + math.e))
    got = L.rank_loss(q, docs, tau, in_batch_negatives=True).item()
    assert got == pytest.approx((l0 + l1) / 2, rel=1e-6)
    # a padded document is never used, neither in its own list nor as another list's negative
    mask = torch.tensor([[True, True], [True, False]])
    l0m = -math.log(math.e / (math.e + 1 + 1))  # own [1, 0], list 1's only real document E1: 0
    l1m = -math.log(math.e / (math.e + 1 + math.e))  # own [1], list 0's documents E0: 0, E1: 1
    got = L.rank_loss(q, docs, tau, mask, in_batch_negatives=True).item()
    assert got == pytest.approx((l0m + l1m) / 2, rel=1e-6)


def test_rank_loss_direction() -> None:
    """Moving the positive toward the query lowers the loss; moving a negative toward it raises it."""
    q = t([E0])
    far = L.rank_loss(q, t([[[0.5, 1.0], E1, NEG_E0]]), 0.25)
    near = L.rank_loss(q, t([[[1.0, 0.1], E1, NEG_E0]]), 0.25)
    assert near < far
    harder = L.rank_loss(q, t([[[1.0, 0.1], [1.0, 0.5], NEG_E0]]), 0.25)
    assert harder > near


def test_dispersive_loss_hand_value_and_direction() -> None:
    tau = 0.5
    docs = t([[E0, E1, NEG_E0]])
    # pair cosines: (E0, E1) 0, (E0, -E0) -1, (E1, -E0) 0
    expected = math.log((1 + math.exp(-2) + 1) / 3)
    assert L.dispersive_loss(docs, tau).item() == pytest.approx(expected, rel=1e-6)
    clustered = t([[E0, [1.0, 0.1], [1.0, -0.1]]])
    spread = t([[E0, [-0.5, 0.87], [-0.5, -0.87]]])
    assert L.dispersive_loss(spread, tau) < L.dispersive_loss(clustered, tau)
    # gradient descent on the loss pushes documents apart
    x = clustered.clone().requires_grad_(True)
    before = L.cosine_matrix(x, x).triu(1).sum().item()
    L.dispersive_loss(x, tau).backward()
    with torch.no_grad():
        x -= 0.1 * x.grad
    assert L.cosine_matrix(x, x).triu(1).sum().item() < before


def test_dispersive_loss_mask_and_averaging() -> None:
    tau = 1.0
    docs = t([[E0, E1, [5.0, 5.0]], [E0, NEG_E0, E1]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    l0 = math.log(1.0)  # one pair, cosine 0
    l1 = math.log((math.exp(-1) + 1 + 1) / 3)
    assert L.dispersive_loss(docs, tau, mask).item() == pytest.approx((l0 + l1) / 2, abs=1e-6)
    single = torch.tensor([[True, False, False], [True, False, False]])
    assert L.dispersive_loss(docs, tau, single).item() == 0.0


def test_dual_matching_loss_uses_the_early_query() -> None:
    docs = t([[E0, E1]])
    early = t([E1])  # the early token points at the negative: high loss
    tau = 0.5
    expected = -math.log(1 / (1 + math.exp(2)))
    assert L.dual_matching_loss(early, docs, tau).item() == pytest.approx(expected, rel=1e-6)
    assert L.dual_matching_loss(t([E0]), docs, tau) < L.dual_matching_loss(early, docs, tau)


def test_similarity_loss_hand_value_and_direction() -> None:
    tau = 0.5
    docs = t([[E0, E1]])
    aug = t([[[1.0, 1.0], E1]])  # copy of doc 0 at 45 degrees, copy of doc 1 exact
    c = math.cos(math.pi / 4)
    # doc 0: own copy cos c, other copy cos 0; doc 1: own copy 1, other copy cos c
    d0 = -math.log(math.exp(c / tau) / (math.exp(c / tau) + 1))
    d1 = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + math.exp(c / tau)))
    assert L.similarity_loss(docs, aug, tau).item() == pytest.approx((d0 + d1) / 2, rel=1e-6)
    closer = t([[[1.0, 0.2], E1]])
    assert L.similarity_loss(docs, closer, tau) < L.similarity_loss(docs, aug, tau)
    swapped = t([[E1, E0]])
    assert L.similarity_loss(docs, swapped, tau) > L.similarity_loss(docs, aug, tau)


def test_similarity_loss_mask() -> None:
    tau = 1.0
    docs = t([[E0, E1, [3.0, 4.0]]])
    aug = t([[E0, E1, [-3.0, 4.0]]])
    mask = torch.tensor([[True, True, False]])
    per_doc = -math.log(math.e / (math.e + 1))
    assert L.similarity_loss(docs, aug, tau, mask).item() == pytest.approx(per_doc, rel=1e-6)


def test_masked_losses_have_finite_gradients() -> None:
    torch.manual_seed(0)
    docs = torch.randn(2, 4, 8, requires_grad=True)
    query = torch.randn(2, 8, requires_grad=True)
    aug = torch.randn(2, 4, 8, requires_grad=True)
    mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    total = (L.rank_loss(query, docs, 0.05, mask, in_batch_negatives=True) + L.dispersive_loss(docs, 0.05, mask)
             + L.dual_matching_loss(query, docs, 0.05, mask) + L.similarity_loss(docs, aug, 0.05, mask))
    total.backward()
    for x in (docs, query, aug):
        assert torch.isfinite(x.grad).all()
    assert float(docs.grad[0, 3].abs().sum()) == 0.0  # a padded document receives no gradient


def test_combine_weights() -> None:
    parts = {"rank": t(1.0), "disperse": t(2.0), "dual": t(3.0), "similar": t(4.0)}
    out = L.combine(parts, L.DEFAULT_WEIGHTS)
    assert out.total.item() == pytest.approx(1 + 0.45 * 2 + 0.85 * 3 + 0.85 * 4)
    assert out.components == {"rank": 1.0, "disperse": 2.0, "dual": 3.0, "similar": 4.0}
    assert L.combine(parts, {"rank": 0.0, "dual": 1.0}).total.item() == pytest.approx(3.0)
    with pytest.raises(ValueError):
        L.combine(parts, {"rank": 0.0})


def test_rank_loss_skips_lists_without_a_positive() -> None:
    tau = 1.0
    q = t([E0, E0])
    docs = t([[E0], [E1]])              # list 0: its positive alone; list 1: a lone negative
    positive = torch.tensor([True, False])
    # list 0 alone counts, with list 1's document as its in-batch negative: cosines 1 and 0
    expected = -math.log(math.e / (math.e + 1))
    value = L.rank_loss(q, docs, tau, in_batch_negatives=True, positive=positive)
    assert value.item() == pytest.approx(expected, rel=1e-6)
    assert L.rank_loss(q, docs, tau, positive=torch.tensor([False, False])).item() == 0.0
    assert L.dual_matching_loss(q, docs, tau, positive=torch.tensor([False, True])).item() == pytest.approx(0.0)


def test_calibration_loss_hand_value_compares_across_lists() -> None:
    tau = 0.5
    # list 0: query E0, positive E0 (cos 1), negative E1 (cos 0); list 1 (another query E1): a lone negative E1 (cos 1)
    q = t([E0, E1])
    docs = t([[E0, E1], [E1, E1]])
    mask = torch.tensor([[True, True], [True, False]])
    positive = torch.tensor([True, False])
    expected = -math.log(math.exp(2) / (math.exp(2) + math.exp(0) + math.exp(2)))
    value = L.calibration_loss(q, docs, tau, mask, positive)
    assert value.item() == pytest.approx(expected, rel=1e-6)
    # within-list ranking alone does not see list 1's high-scoring negative
    assert L.rank_loss(q[:1], docs[:1], tau).item() < value.item()
    # the loss falls as the lone negative's own score falls
    lower = L.calibration_loss(q, t([[E0, E1], [NEG_E0, E1]]), tau, mask, positive)
    assert lower.item() < value.item()
    # no positive or no negative: zero, not NaN
    assert L.calibration_loss(q, docs, tau, mask, torch.tensor([False, False])).item() == 0.0
    assert L.calibration_loss(q[:1], docs[:1, :1], tau).item() == 0.0


def test_calibration_loss_has_finite_gradients_and_combines() -> None:
    torch.manual_seed(0)
    docs = torch.randn(3, 2, 8, requires_grad=True)
    query = torch.randn(3, 8, requires_grad=True)
    value = L.calibration_loss(query, docs, 0.1, torch.tensor([[True, True], [True, False], [True, False]]),
                               torch.tensor([True, True, False]))
    value.backward()
    assert torch.isfinite(docs.grad).all() and float(docs.grad[1, 1].abs().sum()) == 0.0
    assert L.combine({"rank": t(1.0), "calibrate": t(2.0)}, {"rank": 1.0, "calibrate": 0.5}).total.item() == 2.0


def test_distillation_loss_hand_value() -> None:
    tau, teacher_tau = 0.5, 0.25
    q = t([E0])
    docs = t([[E0, E1, NEG_E0]])                                       # student cosines 1, 0, -1
    teacher = t([[0.5, 0.25, 0.0]])                                    # teacher logits 2, 1, 0
    p = torch.softmax(t([2.0, 1.0, 0.0]), 0)
    log_q = torch.log_softmax(t([2.0, 0.0, -2.0]), 0)
    expected = float((p * (p.log() - log_q)).sum())
    assert L.distillation_loss(q, docs, teacher, tau, teacher_tau).item() == pytest.approx(expected, rel=1e-6)
    # the same distribution: zero
    assert L.distillation_loss(q, docs, t([[0.5, 0.0, -0.5]]), tau, teacher_tau).item() == pytest.approx(0.0, abs=1e-6)


def test_distillation_loss_mask_and_short_lists() -> None:
    q = t([E0, E0])
    docs = t([[E0, E1, E1], [E0, E1, NEG_E0]])
    teacher = t([[1.0, 0.0, 99.0], [0.3, 0.2, 0.1]])
    mask = torch.tensor([[True, True, False], [True, False, False]])   # list 1 has one document: skipped
    alone = L.distillation_loss(q[:1], docs[:1, :2], teacher[:1, :2], 0.5, 0.5)
    assert L.distillation_loss(q, docs, teacher, 0.5, 0.5, mask).item() == pytest.approx(alone.item(), rel=1e-6)
    assert L.distillation_loss(q, docs, teacher, 0.5, 0.5, torch.tensor([[True, False, False]] * 2)).item() == 0.0


def test_distillation_loss_pulls_the_student_towards_the_teacher() -> None:
    torch.manual_seed(0)
    docs = torch.randn(2, 4, 8, requires_grad=True)
    query = torch.randn(2, 8)
    teacher = torch.rand(2, 4)
    first = L.distillation_loss(query, docs, teacher, 0.1, 0.05)
    first.backward()
    with torch.no_grad():
        stepped = docs - 0.01 * docs.grad
    assert torch.isfinite(docs.grad).all()
    assert L.distillation_loss(query, stepped, teacher, 0.1, 0.05).item() < first.item()


def test_teacher_agrees_gates_the_lists_the_teacher_ranks_right() -> None:
    teacher = t([[0.9, 0.2, 0.95], [0.9, 0.2, 0.95], [0.5, 0.7, 0.1], [0.4, 0.1, 0.3]])
    mask = torch.tensor([[True, True, True], [True, True, False], [True, True, True], [True, False, False]])
    positive = torch.tensor([True, True, True, False])
    # list 0: a negative above the positive; list 1: that negative is padding; list 2: wrong; list 3: no positive
    assert L.teacher_agrees(teacher, mask, positive).tolist() == [False, True, False, False]
    assert L.teacher_agrees(teacher, mask).tolist() == [False, True, False, True]


def test_distillation_loss_keeps_only_the_gated_lists() -> None:
    torch.manual_seed(1)
    query, docs, teacher = torch.randn(3, 8), torch.randn(3, 4, 8), torch.rand(3, 4)
    lists = torch.tensor([False, True, False])
    gated = L.distillation_loss(query, docs, teacher, 0.1, 0.05, lists=lists)
    assert gated.item() == pytest.approx(L.distillation_loss(query[1:2], docs[1:2], teacher[1:2], 0.1, 0.05).item())
    assert L.distillation_loss(query, docs, teacher, 0.1, 0.05, lists=torch.zeros(3, dtype=torch.bool)).item() == 0.0


def test_order_loss_hand_value_and_symmetry() -> None:
    tau = 0.5
    q = t([E0])
    docs = t([[E0, E1, NEG_E0]])           # cosines 1, 0, -1: logits 2, 0, -2
    reread = t([[E1, E0, NEG_E0]])         # read in reverse, the first two swap: logits 0, 2, -2
    a = torch.log_softmax(t([2.0, 0.0, -2.0]), 0)
    b = torch.log_softmax(t([0.0, 2.0, -2.0]), 0)
    expected = float(((a.exp() - b.exp()) * (a - b)).sum() / 2)  # (KL(a||b) + KL(b||a)) / 2
    assert L.order_loss(q, docs, q, reread, tau).item() == pytest.approx(expected, rel=1e-6)
    assert L.order_loss(q, reread, q, docs, tau).item() == pytest.approx(expected, rel=1e-6)
    assert L.order_loss(q, docs, q, docs, tau).item() == pytest.approx(0.0, abs=1e-7)


def test_order_loss_mask_lone_lists_and_gradients() -> None:
    torch.manual_seed(0)
    docs = torch.randn(3, 4, 8, requires_grad=True)
    reread = torch.randn(3, 4, 8)
    query = torch.randn(3, 8)
    mask = torch.tensor([[True, True, True, False], [True, True, False, False], [True, False, False, False]])
    value = L.order_loss(query, docs, query, reread, 0.1, mask)
    # the one-document list adds nothing; padding is ignored
    two = L.order_loss(query[:2], docs[:2], query[:2], reread[:2], 0.1, mask[:2])
    assert value.item() == pytest.approx(two.item(), rel=1e-6) and value.item() > 0
    first_alone = L.order_loss(query[:1], docs[:1, :3], query[:1], reread[:1, :3], 0.1)
    second_alone = L.order_loss(query[1:2], docs[1:2, :2], query[1:2], reread[1:2, :2], 0.1)
    assert value.item() == pytest.approx((first_alone.item() + second_alone.item()) / 2, rel=1e-5)
    value.backward()
    assert torch.isfinite(docs.grad).all() and float(docs.grad[:, 3].abs().sum()) == 0.0
    with torch.no_grad():
        stepped = docs - 0.05 * docs.grad
    assert L.order_loss(query, stepped, query, reread, 0.1, mask).item() < value.item()
    assert L.order_loss(query[2:], docs[2:], query[2:], reread[2:], 0.1, mask[2:]).item() == 0.0
