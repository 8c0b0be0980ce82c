"""Every method's pure loss against values worked out by hand on tiny tensors, plus the
pitfalls methods.md names (KL direction, batchmean and T^2 live in test_kd_loss.py)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdpipe.distill.methods.ab import ab_loss
from kdpipe.distill.methods.adversarial import d_loss, generator_loss
from kdpipe.distill.methods.at import at_loss, attention_map
from kdpipe.distill.methods.binary import binarize
from kdpipe.distill.methods.cc import cc_loss, correlation
from kdpipe.distill.methods.crd import info_nce
from kdpipe.distill.methods.dkd import dkd_parts
from kdpipe.distill.methods.dml import dml_loss
from kdpipe.distill.methods.fitnet import hint_loss, regressor
from kdpipe.distill.methods.fsp import fsp_matrix
from kdpipe.distill.methods.ft import ft_loss
from kdpipe.distill.methods.jacobian import input_gradient, jacobian_loss
from kdpipe.distill.methods.kd import kd_loss
from kdpipe.distill.methods.logits import logit_mse
from kdpipe.distill.methods.mimic import mimic_loss
from kdpipe.distill.methods.nst import nst_loss
from kdpipe.distill.methods.pkt import pkt_loss
from kdpipe.distill.methods.rkd import rkd_angle_loss, rkd_distance_loss
from kdpipe.distill.methods.sp import sp_loss
from kdpipe.distill.methods.vid import vid_loss

t = torch.tensor
approx = pytest.approx


def test_logit_regression_and_mimic() -> None:
    z_s, z_t = t([[1.0, 2.0]]), t([[0.0, 4.0]])
    assert logit_mse(z_s, z_t).item() == approx((1 + 4) / 2)
    assert mimic_loss(z_s, z_t, target=0).item() == approx(2.5)
    # hard pseudo-labels: CE against the teacher's argmax (class 1)
    assert mimic_loss(z_s, z_t, target=2).item() == approx(math.log(1 + math.exp(-1)), rel=1e-6)
    assert mimic_loss(z_s, z_t, target=1, T=2).item() == approx(kd_loss(z_s, z_t, 2).item())


def test_fitnet_hint_is_half_squared_norm_per_sample() -> None:
    u = t([[[[1.0, 2.0]]], [[[0.0, 2.0]]]])  # [2, 1, 1, 2]
    r = torch.zeros_like(u)
    assert hint_loss(u, r).item() == approx((0.5 * 5 + 0.5 * 4) / 2)


@pytest.mark.parametrize(("hs", "ht"), [(8, 8), (8, 4), (4, 8), (8, 3)])
def test_fitnet_regressor_maps_student_shape_to_teacher_shape(hs: int, ht: int) -> None:
    s, teacher_shape = torch.Size([2, 5, hs, hs]), torch.Size([2, 7, ht, ht])
    assert regressor(s, teacher_shape)(torch.randn(s)).shape == teacher_shape


def test_attention_map_is_spatially_normalized_and_loss_by_hand() -> None:
    f_s = t([[[[1.0, 3.0]], [[3.0, 1.0]]]])  # channels [1,3] and [3,1]: mean of squares [5, 5]
    f_t = t([[[[2.0, 0.0]]]])  # one channel: [4, 0] -> [1, 0]
    assert attention_map(f_s).flatten().tolist() == approx([1 / math.sqrt(2)] * 2)
    expected = ((1 / math.sqrt(2) - 1) ** 2 + 0.5) / 2
    assert at_loss(f_s, f_t).item() == approx(expected, rel=1e-6)
    assert at_loss(10 * f_s, f_t).item() == approx(expected, rel=1e-6)  # scale-free
    big = torch.randn(2, 3, 8, 8)
    assert at_loss(big, F.adaptive_avg_pool2d(big, 4)).item() == approx(0.0, abs=1e-6)


def test_activation_boundary_loss_by_hand() -> None:
    s = t([[-2.0, -0.5, 0.5, 2.0]])
    t_pre = t([[-1.0, -1.0, 1.0, 1.0]])
    # only -0.5 (teacher off, student inside the margin) and 0.5 (teacher on, inside) count
    assert ab_loss(s, t_pre, margin=1.0).item() == approx(0.25 + 0.25)
    # post-ReLU teacher values (0 instead of negative) still read "off", but a post-ReLU
    # student can never be pushed below zero: the loss stays at (0 + 1)^2 per off element.
    assert ab_loss(F.relu(s), F.relu(t_pre)).item() == approx(1 + 1 + 0.25)
    assert ab_loss(torch.cat([s, s]), torch.cat([t_pre, t_pre])).item() == approx(0.5)  # / batch


def test_similarity_preserving_by_hand() -> None:
    f_s, f_t = t([[1.0, 0.0], [0.0, 1.0]]), t([[1.0, 0.0], [1.0, 0.0]])
    r = 1 / math.sqrt(2)
    expected = (2 * (1 - r) ** 2 + 2 * r**2) / 4
    assert sp_loss(f_s, f_t).item() == approx(expected, rel=1e-6)


def test_rkd_distance_and_angle() -> None:
    e_s = t([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert rkd_distance_loss(e_s, 3 * e_s).item() == approx(0.0, abs=1e-7)  # scale-free
    rot = t([[0.0, -1.0], [1.0, 0.0]])
    assert rkd_angle_loss(e_s, 2 * e_s @ rot).item() == approx(0.0, abs=1e-6)
    e_t = t([[0.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
    ds, dt = [1.0, 1.0, math.sqrt(2)], [2.0, 1.0, math.sqrt(5)]
    ns = [d / (sum(ds) / 3) for d in ds]
    nt = [d / (sum(dt) / 3) for d in dt]
    # every pair appears twice in the 3x3 matrix, the diagonal is 0 on both sides
    expected = 2 * sum(0.5 * (a - b) ** 2 for a, b in zip(ns, nt, strict=True)) / 9
    assert rkd_distance_loss(e_s, e_t).item() == approx(expected, rel=1e-5)


def test_pkt_by_hand() -> None:
    e_s, e_t = t([[1.0, 0.0], [0.0, 1.0]]), t([[1.0, 0.0], [1.0, 0.0]])
    # student: cos [[1,0],[0,1]] -> (c+1)/2 rows [1, .5]/1.5; teacher: all 1 -> rows [.5, .5]
    per_row = 0.5 * math.log(0.5 / (2 / 3)) + 0.5 * math.log(0.5 / (1 / 3))
    assert pkt_loss(e_s, e_t).item() == approx(2 * per_row / 4, rel=1e-4)
    assert pkt_loss(e_s, 5 * e_s).item() == approx(0.0, abs=1e-6)


def test_correlation_congruence_taylor_kernel() -> None:
    e = t([[1.0, 0.0], [0.0, 2.0]])
    k = correlation(e, gamma=0.4, order=2)
    same = math.exp(-0.8) * (1 + 0.8 + 0.8**2 / 2)
    assert k.flatten().tolist() == approx([same, math.exp(-0.8), math.exp(-0.8), same], rel=1e-6)
    e_t = t([[1.0, 0.0], [1.0, 0.0]])
    assert cc_loss(e, e_t).item() == approx(2 * (math.exp(-0.8) - same) ** 2 / 4, rel=1e-5)


def test_dkd_parts_by_hand() -> None:
    z_s, z_t, y, T = t([[1.0, 2.0, 0.0]]), t([[3.0, 1.0, 0.0]]), t([0]), 2.0

    def sm(z: list[float]) -> list[float]:
        e = [math.exp(v / T) for v in z]
        return [v / sum(e) for v in e]

    ps, pt = sm([1.0, 2.0, 0.0]), sm([3.0, 1.0, 0.0])
    bs, bt = [ps[0], 1 - ps[0]], [pt[0], 1 - pt[0]]
    tckd = T * T * sum(b * math.log(b / a) for a, b in zip(bs, bt, strict=True))
    ns = [ps[1] / (1 - ps[0]), ps[2] / (1 - ps[0])]
    nt = [pt[1] / (1 - pt[0]), pt[2] / (1 - pt[0])]
    nckd = T * T * sum(b * math.log(b / a) for a, b in zip(ns, nt, strict=True))
    got_t, got_n = dkd_parts(z_s, z_t, y, T)
    assert got_t.item() == approx(tckd, rel=1e-5)
    assert got_n.item() == approx(nckd, rel=1e-5)


def test_nst_mmd_by_hand() -> None:
    f_s = t([[[[1.0, 0.0]]]])  # one channel, selectivity [1, 0]
    f_t = t([[[[0.0, 3.0]]]])  # one channel, selectivity [0, 1] after normalization
    assert nst_loss(f_s, f_t).item() == approx(1 + 1 - 0)
    assert nst_loss(f_s, 2 * f_s).item() == approx(0.0, abs=1e-6)
    # the HW x HW form equals the direct mean of the polynomial kernel over channel pairs
    torch.manual_seed(0)
    a, b = torch.randn(2, 50, 2, 2), torch.randn(2, 70, 2, 2)  # deep: few positions
    s, t_ = (F.normalize(v.flatten(2), dim=2) for v in (a, b))

    def poly(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (x @ y.transpose(1, 2)).pow(2).mean()

    direct = poly(t_, t_) + poly(s, s) - 2 * poly(s, t_)
    assert nst_loss(a, b).item() == approx(direct.item(), rel=1e-5)


def test_fsp_matrix_by_hand() -> None:
    f1, f2 = t([[[[1.0, 2.0]]]]), t([[[[3.0, 4.0]]]])
    assert fsp_matrix(f1, f2).item() == approx((1 * 3 + 2 * 4) / 2)


def test_ft_loss_by_hand() -> None:
    assert ft_loss(t([[3.0, 0.0]]), t([[0.0, 5.0]])).item() == approx(2.0)
    assert ft_loss(t([[3.0, 4.0]]), t([[6.0, 8.0]])).item() == approx(0.0, abs=1e-7)


def test_vid_negative_log_likelihood_by_hand() -> None:
    a = torch.full((1,), math.log(math.e - 1))  # softplus(a) = 1
    t_feat, mean = torch.ones(1, 1, 1, 1), torch.zeros(1, 1, 1, 1)
    assert vid_loss(mean, a, t_feat).item() == approx(0.5 * (math.log(1 + 1e-5) + 1 / (1 + 1e-5)))


def test_crd_info_nce_by_hand() -> None:
    e = torch.eye(2)
    no_negatives = torch.zeros(0, 2)
    assert info_nce(e, e, no_negatives, 1.0).item() == approx(math.log(1 + math.exp(-1)), rel=1e-6)
    queued = t([[1.0, 0.0]])  # a queued copy of sample 0's positive competes with it
    # anchor 0 sees logits [1 (positive), 0 (other sample), 1 (queued)]; anchor 1 [0, 1, 0]
    expected = (math.log(2 * math.e + 1) - 1 + math.log(math.e + 2) - 1) / 2
    assert info_nce(e, e, queued, 1.0).item() == approx(expected, rel=1e-6)
    # Rank 1 of 2 under torchrun: its one anchor's positive is row 1 of the gathered batch.
    one = info_nce(e[1:], e, no_negatives, 1.0, offset=1).item()
    assert one == approx(math.log(1 + math.exp(-1)), rel=1e-6)


def test_jacobian_input_gradient_and_loss() -> None:
    lin = nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(t([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]))
    x = torch.randn(2, 3, requires_grad=True)
    g = input_gradient(lin(x), x, t([1, 0]), create_graph=True)
    assert g.tolist() == [[4.0, 5.0, 6.0], [1.0, 2.0, 3.0]]
    assert jacobian_loss(t([[3.0, 4.0]]), t([[6.0, 8.0]])).item() == approx(0.0, abs=1e-7)
    assert jacobian_loss(t([[3.0, 4.0]]), t([[4.0, -3.0]])).item() == approx(0.04 + 1.96)


def test_jacobian_term_reaches_student_weights_by_double_backprop() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    x = torch.randn(5, 3, requires_grad=True)
    j = input_gradient(net(x), x, torch.zeros(5, dtype=torch.long), create_graph=True)
    jacobian_loss(j, torch.randn(5, 3)).backward()
    assert net[0].weight.grad is not None and net[0].weight.grad.abs().sum() > 0


def test_dml_loss_is_ce_plus_mean_kl_from_detached_peers() -> None:
    z_k, z_l = t([[1.0, 0.0]], requires_grad=True), t([[0.0, 1.0]], requires_grad=True)
    y = t([0])
    p_l = [1 / (1 + math.e), math.e / (1 + math.e)]
    p_k = [math.e / (1 + math.e), 1 / (1 + math.e)]
    kl = sum(a * math.log(a / b) for a, b in zip(p_l, p_k, strict=True))
    loss = dml_loss(z_k, [z_l], y)
    assert loss.item() == approx(-math.log(p_k[0]) + kl, rel=1e-6)
    loss.backward()
    assert z_l.grad is None  # the other peer's output is a fixed target


def test_binarize_gives_plus_minus_alpha_per_output_channel_with_straight_through() -> None:
    w = t([[1.0, -3.0], [0.5, 0.5]], requires_grad=True)
    b = binarize(w)
    assert b.tolist() == [[2.0, -2.0], [0.5, 0.5]]
    b.sum().backward()
    assert w.grad is not None and w.grad.abs().sum() > 0


def test_adversarial_losses_by_hand() -> None:
    zero = torch.zeros(3, 1)
    assert d_loss(zero, zero).item() == approx(2 * math.log(2))
    assert generator_loss(zero).item() == approx(math.log(2))
