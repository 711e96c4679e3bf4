"""Issue 19, item 8: DAN, entropy-min, DCT, MC-Net (2D and 3D), ICT-Med and SemSim on identical tiny inputs.

Each test replaces the method's networks by tiny stubs whose outputs follow a formula (a per-pixel linear map,
sometimes plus a fixed positional term), runs ONE `train_step`, and compares the logged losses with values
derived here independently in plain Python (`math`, nested lists, explicit loops) from the equations of the
reference code (SSL4MIS @06df604, ycwu1997/MC-Net @fee453c, hritam-98/ICT-MedSeg @99a8032) or of the SemSim
paper: no torch loss function and no code of the method module is used for the expected values.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import methods.dct as dct_mod
from methods.dan import DAN, DANConfig
from methods.dct import DCT, DCTConfig, rotation_consistency
from methods.entropy_min import EntropyMin, EntropyMinConfig
from methods.ict_med import ICTMed, ICTMedConfig
from methods.mcnet import MCNet, MCNetConfig, MCNetPlus
from methods.semsim import SemSim, SemSimConfig, affinity, cross_prediction, refine, resize_prediction
from benchmark.losses import masked_ce_loss
from methods.base import Labeled
from method_helpers import method_ctx, method_ctx_3d

C = 4          # classes of method_ctx
SIDE = 4       # image side of the tiny 2D batches
EPS_DICE = 1e-5


# ------------------------------------------------------------------------------------------ stubs
class PixelNet(nn.Module):
    """logits[b, c, *s] = w[c] * x[b, 0, *s] + bias[c] (+ pos[c, *s]): a formula the tests evaluate by hand."""

    def __init__(self, w: list[float], bias: list[float], pos: torch.Tensor | None = None) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w))
        self.bias = nn.Parameter(torch.tensor(bias))
        self.register_buffer("pos", pos if pos is not None else torch.zeros(len(w), 1))
        self.has_pos = pos is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        out = self.w.view(shape) * x + self.bias.view(shape)
        return out + self.pos.unsqueeze(0) if self.has_pos else out


class MultiHead(nn.Module):
    """Several PixelNets on the same input: a stand-in for MC-Net's decoders."""

    def __init__(self, *heads: PixelNet) -> None:
        super().__init__()
        self.heads = nn.ModuleList(heads)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(h(x) for h in self.heads)


W1, B1 = [1.5, -1.0, 0.5, 2.0], [0.0, 0.3, -0.2, -0.6]
W2, B2 = [-0.8, 1.2, 0.4, -1.5], [0.2, -0.1, 0.1, 0.5]


def batch_2d(n: int = 2, m: int = 2, seed: int = 0, classes: int = C) -> tuple[Labeled, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x, u = torch.rand(n, 1, SIDE, SIDE, generator=g), torch.rand(m, 1, SIDE, SIDE, generator=g)
    y = torch.randint(0, classes, (n, SIDE, SIDE), generator=g)
    y[0, 0, :classes] = torch.arange(classes)   # every class present in the labeled batch
    return Labeled(x, y), u


# --------------------------------------------------------------------------------- hand arithmetic
def pixels(t: torch.Tensor) -> list[list[float]]:
    """(B, 1, *spatial) -> per image the flat list of pixel values (row-major)."""
    return [img.flatten().tolist() for img in t]


def softmax(v: list[float]) -> list[float]:
    m = max(v)
    e = [math.exp(a - m) for a in v]
    return [a / sum(e) for a in e]


def probs_of(xs: list[list[float]], w: list[float], b: list[float], pos: list[list[float]] | None = None
             ) -> list[list[list[float]]]:
    """[image][pixel][class] softmax of the PixelNet formula."""
    return [[softmax([w[c] * v + b[c] + (pos[c][k] if pos else 0.0) for c in range(len(w))])
             for k, v in enumerate(img)] for img in xs]


def hand_ce(probs, labels) -> float:
    """Mean over pixels of -log p[label]."""
    terms = [-math.log(p[y]) for img, lab in zip(probs, labels) for p, y in zip(img, lab)]
    return sum(terms) / len(terms)


def hand_dice_sums(probs, labels, c: int) -> tuple[float, float, float]:
    """Class c's (intersection, sum p^2, sum t) over the batch (t one-hot, so sum t = sum t^2)."""
    i = z = y = 0.0
    for img, lab in zip(probs, labels):
        for p, t in zip(img, lab):
            hit = 1.0 if t == c else 0.0
            i, z, y = i + p[c] * hit, z + p[c] ** 2, y + hit
    return i, z, y


def hand_dice_ssl4mis(probs, labels, classes: int = C) -> float:
    """SSL4MIS DiceLoss: mean over classes of 1 - (2 I + eps) / (sum p^2 + sum t + eps), sums over the batch."""
    total = 0.0
    for c in range(classes):
        i, z, y = hand_dice_sums(probs, labels, c)
        total += 1 - (2 * i + EPS_DICE) / (z + y + EPS_DICE)
    return total / classes


def hand_sup(probs, labels) -> float:
    return 0.5 * (hand_ce(probs, labels) + hand_dice_ssl4mis(probs, labels))


def ramp(unit: float, length: float) -> float:
    t = min(max(unit, 0.0), length) / length
    return math.exp(-5 * (1 - t) ** 2)


def labels_of(y: torch.Tensor) -> list[list[int]]:
    return [img.flatten().tolist() for img in y]


# ============================================================================================ DAN
class StubDiscriminator(nn.Module):
    """logits = [a0 * mean p_0 + a1 * mean image, a2 * mean p_1]; records every call's mode and batch size."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor([2.0, -1.0, 3.0]))
        self.calls: list[tuple[bool, int]] = []

    def forward(self, prob_map: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        self.calls.append((self.training, prob_map.shape[0]))
        return torch.stack([self.a[0] * prob_map[:, 0].mean((1, 2)) + self.a[1] * image.mean((1, 2, 3)),
                            self.a[2] * prob_map[:, 1].mean((1, 2))], 1)


def hand_disc_ce(probs, xs, targets, a=(2.0, -1.0, 3.0)) -> float:
    """CE of the stub discriminator's logits against `targets` (1 = labeled), by hand."""
    terms = []
    for img_p, img_x, t in zip(probs, xs, targets):
        l0 = a[0] * sum(p[0] for p in img_p) / len(img_p) + a[1] * sum(img_x) / len(img_x)
        l1 = a[2] * sum(p[1] for p in img_p) / len(img_p)
        lse = math.log(math.exp(l0) + math.exp(l1))
        terms.append(lse - (l1 if t == 1 else l0))
    return sum(terms) / len(terms)


@pytest.mark.parametrize("step,unit", [(149, 0), (150, 1), (15000, 100)])
def test_dan_losses_targets_and_weight_by_hand(step, unit):
    torch.manual_seed(0)
    dan = DAN(DANConfig(disc_input_size=16), method_ctx())
    dan.model, dan.discriminator = PixelNet(W1, B1), StubDiscriminator()
    dan.optimizer = torch.optim.SGD(dan.model.parameters(), lr=0.0)   # D's step then sees these very predictions
    dan.d_optimizer = torch.optim.Adam(dan.discriminator.parameters(), lr=1e-4, betas=(0.9, 0.99))
    dan.d_optimizer.param_groups[0]["lr"] = 0.5                      # as if the Trainer's schedule had touched it
    labeled, u = batch_2d()
    out = dan.train_step(labeled, u, step)

    xs, us = pixels(labeled.image), pixels(u)
    p_l, p_u = probs_of(xs, W1, B1), probs_of(us, W1, B1)
    sup = hand_sup(p_l, labels_of(labeled.label))
    adv = hand_disc_ce(p_u, us, [1, 1])                        # unlabeled predictions vs "labeled" (class 1)
    d_loss = hand_disc_ce(p_l + p_u, xs + us, [1, 1, 0, 0])    # D: labeled = 1, unlabeled = 0, whole batch
    weight = 0.1 * ramp(unit, 200)                             # 0.1 * sigmoid_rampup(step // 150, 200)
    assert out["loss_sup"].item() == pytest.approx(sup, rel=1e-5)
    assert out["loss_adv"].item() == pytest.approx(adv, rel=1e-5)
    assert out["loss_d"].item() == pytest.approx(d_loss, rel=1e-5)
    assert out["cons_weight"].item() == pytest.approx(weight, rel=1e-6)
    assert out["loss"].item() == pytest.approx(sup + weight * adv, rel=1e-5)
    # segmenter step: D in eval mode on the unlabeled part; D step: D in train mode on the whole batch
    assert dan.discriminator.calls == [(False, 2), (True, 4)]
    assert dan.d_optimizer.param_groups[0]["lr"] == 1e-4       # D's lr is the constant d_lr


# ===================================================================================== entropy-min
def test_entropy_min_normalised_entropy_of_the_whole_batch_by_hand():
    em = EntropyMin(EntropyMinConfig(), method_ctx())
    em.model = PixelNet(W1, B1)
    em.optimizer = torch.optim.SGD(em.model.parameters(), lr=0.0)
    labeled, u = batch_2d()
    out = em.train_step(labeled, u, step=0)
    probs = probs_of(pixels(labeled.image) + pixels(u), W1, B1)
    ents = [-sum(q * math.log(q + 1e-6) for q in p) / math.log(C) for img in probs for p in img]
    ent = sum(ents) / len(ents)                     # over ALL 4 images, labeled included
    assert out["loss_ent"].item() == pytest.approx(ent, rel=1e-5)
    sup = hand_sup(probs[:2], labels_of(labeled.label))
    assert out["loss"].item() == pytest.approx(sup + 0.1 * math.exp(-5) * ent, rel=1e-5)
    # the normalisation: a uniform softmax scores ln(0.25 + 1e-6) / ln(0.25), just below 1
    em.model = PixelNet([0.0] * C, [0.0] * C)
    em.optimizer = torch.optim.SGD(em.model.parameters(), lr=0.0)
    flat = em.train_step(labeled, u, step=0)["loss_ent"].item()
    assert flat == pytest.approx(math.log(0.25 + 1e-6) / math.log(0.25), rel=1e-6) and flat < 1


# ============================================================================================= DCT
def rot90_once(flat: list[float], side: int) -> list[float]:
    """torch.rot90(k=1, dims=(H, W)) of a row-major side x side map: out[i][j] = in[j][side - 1 - i]."""
    return [flat[j * side + (side - 1 - i)] for i in range(side) for j in range(side)]


@pytest.mark.parametrize("k", [0, 1, 3])
def test_dct_ssl4mis_rotation_consistency_by_hand(monkeypatch, k):
    g = torch.Generator().manual_seed(1)
    pos = torch.randn(C, SIDE, SIDE, generator=g)               # makes the net position-dependent
    dct = DCT(DCTConfig(variant="ssl4mis"), method_ctx())
    dct.model1 = PixelNet(W1, B1, pos)
    dct.optimizer1 = torch.optim.SGD(dct.model1.parameters(), lr=0.0)
    monkeypatch.setattr(dct_mod.random, "randrange", lambda n: k)
    labeled, u = batch_2d()
    out = dct.train_step(labeled, u, step=30000)

    pos_flat = [pos[c].flatten().tolist() for c in range(C)]
    us = pixels(u)
    rot_us = us
    for _ in range(k):
        rot_us = [rot90_once(img, SIDE) for img in rot_us]
    p = probs_of(us, W1, B1, pos_flat)                          # plain pass on the unlabeled images
    q = probs_of(rot_us, W1, B1, pos_flat)                      # pass on the rotated images
    sq = []
    for img_p, img_q in zip(p, q):
        for c in range(C):
            rp = [pix[c] for pix in img_p]
            for _ in range(k):
                rp = rot90_once(rp, SIDE)
            sq += [(qq[c] - r) ** 2 for qq, r in zip(img_q, rp)]
    cons = sum(sq) / len(sq)                  # k = 0: exactly 0 here (the stub has no dropout)
    assert out["rot_k"].item() == k and (cons > 1e-3) == (k != 0)
    assert out["loss_cons"].item() == pytest.approx(cons, rel=1e-5, abs=1e-12)
    sup = hand_sup(probs_of(pixels(labeled.image), W1, B1, pos_flat), labels_of(labeled.label))
    assert out["loss"].item() == pytest.approx(sup + 0.1 * cons, rel=1e-5)


def test_dct_first_upload_variant_has_the_same_value_and_twice_the_gradient():
    assert DCT.presets["ssl4mis-9c2d468"] == {"variant": "ssl4mis", "rotation_gradient": "full"}
    g = torch.Generator().manual_seed(0)
    p = torch.rand(1, 2, 3, 3, generator=g).requires_grad_(True)
    q = torch.rand(1, 2, 3, 3, generator=g).requires_grad_(True)
    split, full = rotation_consistency(p, q, 1), rotation_consistency(p, q, 1, split=False)
    assert split.item() == pytest.approx(full.item())
    gs, gf = torch.autograd.grad(split, (p, q)), torch.autograd.grad(full, (p, q))
    # d/dq of mean((q - R p)^2) = 2 (q - R p) / N, computed by hand for one entry
    n = q.numel()
    rp = torch.rot90(p.detach(), 1, (2, 3))
    assert gf[1][0, 1, 2, 0].item() == pytest.approx(2 * (q[0, 1, 2, 0] - rp[0, 1, 2, 0]).item() / n)
    for a, b in zip(gs, gf):
        torch.testing.assert_close(2 * a, b)
    with pytest.raises(ValueError, match="rotation_gradient"):
        DCTConfig(rotation_gradient="half")


def fgsm_sign(img_x, img_p, targets, w, n_pixels) -> list[float]:
    """sign of d mean-CE / d x per pixel for the per-pixel linear net: sum_c (p_c - y_c) w_c / N."""
    out = []
    for v, p, y in zip(img_x, img_p, targets):
        g = sum((p[c] - (1.0 if c == y else 0.0)) * w[c] for c in range(len(w))) / n_pixels
        assert abs(g) > 1e-9                   # no tie: the sign is well defined
        out.append(v + 0.02 * (1.0 if g > 0 else -1.0))
    return out


def test_dct_paper_step_by_hand():
    dct = DCT(DCTConfig(), method_ctx(iterations=600))      # ramp over 80/600 of 600 = 80 steps
    dct.model1, dct.model2 = PixelNet(W1, B1), PixelNet(W2, B2)
    dct.optimizer1 = torch.optim.SGD(dct.model1.parameters(), lr=0.0)
    dct.optimizer2 = torch.optim.SGD(dct.model2.parameters(), lr=0.0)
    labeled, u = batch_2d()
    out = dct.train_step(labeled, u, step=40)

    xs = pixels(labeled.image) + pixels(u)
    p1, p2 = probs_of(xs, W1, B1), probs_of(xs, W2, B2)
    y = labels_of(labeled.label)
    sup1, sup2 = hand_sup(p1[:2], y), hand_sup(p2[:2], y)

    def h(p):
        return -sum(q * math.log(q) for q in p if q > 0)

    jsd = [h([(a + b) / 2 for a, b in zip(pa, pb)]) - (h(pa) + h(pb)) / 2
           for ia, ib in zip(p1[2:], p2[2:]) for pa, pb in zip(ia, ib)]
    cot = sum(jsd) / len(jsd)                               # unlabeled part only
    # FGSM targets: the label on labeled images, the net's own argmax on unlabeled ones
    t1 = y + [[max(range(C), key=p.__getitem__) for p in img] for img in p1[2:]]
    t2 = y + [[max(range(C), key=p.__getitem__) for p in img] for img in p2[2:]]
    n_pix = len(xs) * SIDE * SIDE
    adv1 = [fgsm_sign(ix, ip, it, W1, n_pix) for ix, ip, it in zip(xs, p1, t1)]
    adv2 = [fgsm_sign(ix, ip, it, W2, n_pix) for ix, ip, it in zip(xs, p2, t2)]
    q2, q1 = probs_of(adv1, W2, B2), probs_of(adv2, W1, B1)   # net 2 on net 1's examples, and vice versa

    def soft_ce(targets, probs):
        terms = [-sum(t[c] * math.log(q[c]) for c in range(C))
                 for ti, qi in zip(targets, probs) for t, q in zip(ti, qi)]
        return sum(terms) / len(terms)

    dif = soft_ce(p1, q2) + soft_ce(p2, q1)                 # all images
    r = math.exp(-5 * 0.5 ** 2)                             # step 40 of an 80-step ramp
    assert out["ramp"].item() == pytest.approx(r)
    assert out["loss_sup1"].item() == pytest.approx(sup1, rel=1e-5)
    assert out["loss_sup2"].item() == pytest.approx(sup2, rel=1e-5)
    assert out["loss_cot"].item() == pytest.approx(cot, rel=1e-4)   # the module puts 1e-6 inside its logs
    assert out["loss_dif"].item() == pytest.approx(dif, rel=1e-5)
    assert out["loss"].item() == pytest.approx(sup1 + sup2 + 10 * r * cot + 0.5 * r * dif, rel=1e-5)


# ========================================================================================== MC-Net
def sharpen_by_hand(p: float, t: float = 0.1) -> float:
    return p ** (1 / t) / (p ** (1 / t) + (1 - p) ** (1 / t))


def hand_mutual_consistency(heads) -> float:
    """sum over ordered pairs i != j of mean((p_i - s(p_j))^2); heads = [head][image][pixel][class]."""
    total = 0.0
    for i, pi in enumerate(heads):
        for j, pj in enumerate(heads):
            if i != j:
                sq = [(a[c] - sharpen_by_hand(b[c])) ** 2 for ii, jj in zip(pi, pj) for a, b in zip(ii, jj)
                      for c in range(len(a))]
                total += sum(sq) / len(sq)
    return total


def hand_dice_mcnet(probs, labels, classes: int = C) -> float:
    """MC-Net DiceLoss: mean over classes of 1 - I / (sum p^2 + sum t^2 + 1e-10) (no factor 2)."""
    total = 0.0
    for c in range(classes):
        i, z, y = hand_dice_sums(probs, labels, c)
        total += 1 - i / (z + y + 1e-10)
    return total / classes


W3, B3 = [0.3, 0.9, -0.7, 1.1], [0.4, 0.0, -0.3, 0.1]


@pytest.mark.parametrize("cls,heads", [(MCNet, [(W1, B1), (W2, B2)]), (MCNetPlus, [(W1, B1), (W2, B2), (W3, B3)])])
def test_mcnet_2d_step_by_hand(cls, heads):
    mc = cls(MCNetConfig(), method_ctx())
    mc.model = MultiHead(*(PixelNet(w, b) for w, b in heads))
    mc.optimizer = torch.optim.SGD(mc.model.parameters(), lr=0.0)
    labeled, u = batch_2d(n=2, m=3)
    out = mc.train_step(labeled, u, step=149)       # the reference's iter (149 + 1) // 150 = 1
    xs = pixels(labeled.image) + pixels(u)
    probs = [probs_of(xs, w, b) for w, b in heads]
    sup = sum(hand_dice_mcnet(p[:2], labels_of(labeled.label)) for p in probs)
    cons = hand_mutual_consistency(probs)           # over the WHOLE batch (5 images)
    weight = 0.1 * ramp(1, 200)
    assert sharpen_by_hand(0.6) == pytest.approx(0.98295, abs=1e-5)
    assert out["loss_dice"].item() == pytest.approx(sup, rel=1e-5)
    assert out["loss_cons"].item() == pytest.approx(cons, rel=1e-5)
    assert out["cons_weight"].item() == pytest.approx(weight)
    assert out["loss"].item() == pytest.approx(1.0 * sup + weight * cons, rel=1e-5)


def test_mcnet_3d_la_step_by_hand():
    """LA: Binary_dice_loss (factor 2, linear sums) on the foreground channel of the labeled half, lamda 0.5,
    consistency 1.0 ramped over 40 units; step 5999 is the reference's iter 6000 = unit 40 (full weight)."""
    mc = MCNet(MCNetConfig(lamda=0.5, consistency=1.0, consistency_rampup=40.0), method_ctx_3d())
    heads = [([1.0, -1.0], [0.2, -0.1]), ([-0.5, 1.5], [0.0, -0.4])]
    mc.model = MultiHead(*(PixelNet(w, b) for w, b in heads))
    mc.optimizer = torch.optim.SGD(mc.model.parameters(), lr=0.0)
    g = torch.Generator().manual_seed(3)
    x, u = torch.rand(2, 1, 3, 3, 2, generator=g), torch.rand(2, 1, 3, 3, 2, generator=g)
    y = torch.randint(0, 2, (2, 3, 3, 2), generator=g)
    out = mc.train_step(Labeled(x, y), u, step=5999)
    xs = pixels(x) + pixels(u)
    probs = [probs_of(xs, w, b) for w, b in heads]
    ys = labels_of(y)
    sup = 0.0
    for p in probs:
        inter = sum(pix[1] * t for img, lab in zip(p[:2], ys) for pix, t in zip(img, lab))
        psum = sum(pix[1] for img in p[:2] for pix in img)
        tsum = sum(t for lab in ys for t in lab)
        sup += 1 - (2 * inter + 1e-8) / (psum + tsum + 1e-8)
    cons = hand_mutual_consistency(probs)
    assert out["cons_weight"].item() == pytest.approx(1.0)
    assert out["loss_dice"].item() == pytest.approx(sup, rel=1e-5)
    assert out["loss_cons"].item() == pytest.approx(cons, rel=1e-5)
    assert out["loss"].item() == pytest.approx(0.5 * sup + cons, rel=1e-5)


# ========================================================================================= ICT-Med
def test_ict_med_mixup_of_teacher_predictions_and_ema_by_hand(monkeypatch):
    ict = ICTMed(ICTMedConfig(), method_ctx())
    ict.model, ict.teacher = PixelNet(W1, B1), PixelNet(W2, B2)
    for p in ict.teacher.parameters():
        p.requires_grad_(False)
    ict.optimizer = torch.optim.SGD(ict.model.parameters(), lr=0.5)
    lams = [0.3, 0.9]                                             # k = labeled_bs // 2 = 2 pairs
    monkeypatch.setattr(ict, "sample_lambda", lambda k, like: torch.tensor(lams[:k]).view(k, 1, 1, 1))
    labeled, u = batch_2d(n=4, m=4)
    out = ict.train_step(labeled, u, step=0)

    us = pixels(u)
    u0, u1 = us[:2], us[2:4]                                      # u[:k] and u[k:2k]
    mixed = [[(1 - lam) * a + lam * b for a, b in zip(i0, i1)] for i0, i1, lam in zip(u0, u1, lams)]
    student = probs_of(mixed, W1, B1)
    t0, t1 = probs_of(u0, W2, B2), probs_of(u1, W2, B2)           # the teacher on each half, separately
    sq = [(s[c] - ((1 - lam) * a[c] + lam * b[c])) ** 2
          for si, ai, bi, lam in zip(student, t0, t1, lams) for s, a, b in zip(si, ai, bi) for c in range(C)]
    cons = sum(sq) / len(sq)
    sup = hand_sup(probs_of(pixels(labeled.image), W1, B1), labels_of(labeled.label))
    assert out["loss_cons"].item() == pytest.approx(cons, rel=1e-5)
    assert out["loss"].item() == pytest.approx(sup + 0.1 * math.exp(-5) * cons, rel=1e-5)
    # EMA: alpha = min(1 - 1/(t+1), 0.99): step 0 copies the updated student, step 1 averages half and half
    torch.testing.assert_close(ict.teacher.w, ict.model.w.detach())
    teacher_before = ict.teacher.w.clone()
    ict.train_step(labeled, u, step=1)
    torch.testing.assert_close(ict.teacher.w, 0.5 * teacher_before + 0.5 * ict.model.w.detach())


# ========================================================================================== SemSim
def test_semsim_affinity_eq4_by_hand():
    vecs = [(1.0, 0.0), (1.0, 1.0), (0.0, 1.0)]                  # three pixels of a 1 x 3 map, D = 2
    feat = torch.tensor(vecs).T.reshape(1, 2, 1, 3)
    t = 0.5
    m = affinity(feat, temperature=t)[0]

    def cos(a, b):
        return (a[0] * b[0] + a[1] * b[1]) / math.hypot(*a) / math.hypot(*b)

    for k1 in range(3):
        row = softmax([cos(vecs[k1], vecs[k2]) / t for k2 in range(3)])   # softmax over k2 for each k1
        assert m[k1].tolist() == pytest.approx(row, rel=1e-6)


def test_semsim_intra_prediction_resizes_probabilities_then_refines_eq5_by_hand():
    """I(p^s) bilinearly halves a 4x4 softmax map to 2x2 (align_corners=False at scale 1/2 = the mean of each
    2x2 block), then p^in(k1) = (I(p)(k1) + sum_k2 M(k1, k2) I(p)(k2)) / 2."""
    sem = SemSim(SemSimConfig(affinity_temperature=0.5), method_ctx())
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(1, C, 4, 4, generator=g) * 3
    fused = torch.randn(1, 6, 2, 2, generator=g)
    got = sem._intra(logits, fused)[0]                            # (C, 2, 2)
    z = logits[0].tolist()
    p = [[softmax([z[c][i][j] for c in range(C)]) for j in range(4)] for i in range(4)]
    small = [[[sum(p[2 * i + a][2 * j + b][c] for a in (0, 1) for b in (0, 1)) / 4 for c in range(C)]
              for j in range(2)] for i in range(2)]
    flat = [small[i][j] for i in range(2) for j in range(2)]      # row-major k
    f = [fused[0, :, i, j].tolist() for i in range(2) for j in range(2)]

    def cos(a, b):
        return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))

    for k1 in range(4):
        row = softmax([cos(f[k1], f[k2]) / 0.5 for k2 in range(4)])
        want = [(flat[k1][c] + sum(row[k2] * flat[k2][c] for k2 in range(4))) / 2 for c in range(C)]
        assert got[:, k1 // 2, k1 % 2].tolist() == pytest.approx(want, rel=1e-5)
    # the resize acts on probabilities (a distribution per pixel), not on logits
    torch.testing.assert_close(resize_prediction(logits, (2, 2)).sum(1), torch.ones(1, 2, 2))
    assert not torch.allclose(resize_prediction(logits, (2, 2)),
                              F.interpolate(logits, size=(2, 2), mode="bilinear", align_corners=False).softmax(1))
    # refine on logits: softmax(z + z M)
    zz = torch.randn(1, C, 2, 2, generator=g)
    mm = affinity(fused, 0.5)
    zf = zz.flatten(2)
    torch.testing.assert_close(refine(zz, mm, on="logits"), (zf + zf @ mm.transpose(1, 2)).softmax(1).view(1, C, 2, 2))


def test_semsim_cross_prediction_eqs_9_to_12_by_hand():
    m_vals = [[0.9, 0.1, -0.2], [0.4, 0.5, 0.0]]                  # m(j, c) for B_l = 2 labeled images, C = 3
    m = torch.tensor(m_vals).view(1, 2, 3, 1)                     # (B_u, B_l, C, P)
    t, r = 0.5, 10.0
    log_p, weight = cross_prediction(m, torch.ones(3, dtype=torch.bool), t, r)
    e = [[math.exp(v / t) for v in row] for row in m_vals]
    denom = sum(sum(row) for row in e)
    p_cr = [sum(e[j][c] for j in range(2)) / denom for c in range(3)]              # Eq. 9
    q = [softmax([v / t for v in row]) for row in m_vals]                          # class distribution per j
    q_bar = [(q[0][c] + q[1][c]) / 2 for c in range(3)]                            # Eq. 10
    kl = [sum(q[j][c] * math.log(q[j][c] / q_bar[c]) for c in range(3)) for j in range(2)]   # Eq. 11
    u_bar = sum(math.exp(-r * k) for k in kl) / 2                                  # Eq. 12
    assert log_p[0, :, 0].exp().tolist() == pytest.approx(p_cr, rel=1e-6)
    assert weight[0, 0].item() == pytest.approx(u_bar, rel=1e-5)
    # Eq. 13: CE to the pseudo-label times U~ on kept pixels, divided by ALL pixels (1/|B_u| sum)
    log_p2 = torch.log(torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]]).T.reshape(1, 3, 1, 2))
    target, keep = torch.tensor([[[0, 2]]]), torch.tensor([[[True, False]]])
    w = torch.tensor([[[0.8, 0.5]]])
    assert masked_ce_loss(log_p2, target, keep, weight=w).item() == pytest.approx(0.8 * -math.log(0.7) / 2, rel=1e-6)


def test_semsim_strong_views_never_paste_an_image_onto_itself(monkeypatch):
    """CutMix pastes from ANOTHER image of the unlabeled batch (a derangement). The step is stopped once its
    strong views exist (the rest of the step is covered elsewhere)."""
    import methods.semsim as ss

    class Stop(Exception):
        pass

    partners = []
    real = ss.strong_view

    def spy(weak, cfg, partner=None, **kw):
        partners.append(real(weak, cfg, partner=partner, **kw).partner.tolist())
        if len(partners) % 2 == 0:             # default streams: two strong views per step
            raise Stop
        return None

    monkeypatch.setattr(ss, "strong_view", spy)
    torch.manual_seed(0)
    sem = SemSim(SemSimConfig(), method_ctx())
    monkeypatch.setattr(sem.model, "forward_with_encoder_features",   # the views do not depend on the net
                        lambda x: (torch.zeros(x.shape[0], C, *x.shape[2:], requires_grad=True), None))
    g = torch.Generator().manual_seed(0)
    labeled = Labeled(torch.rand(1, 1, 16, 16, generator=g), torch.randint(0, C, (1, 16, 16), generator=g))
    for _ in range(5):                        # a plain permutation of 3 passes 10 times w.p. 3^-10
        with pytest.raises(Stop):
            sem.train_step(labeled, torch.rand(3, 1, 16, 16, generator=g), 0)
    assert len(partners) == 10 and all(p != i for ps in partners for i, p in enumerate(ps))
