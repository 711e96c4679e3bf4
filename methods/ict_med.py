"""ICT-Med: Basak, Bhattacharya, Hussain, Chatterjee, "An Embarrassingly Simple Consistency Regularization
Method for Semi-Supervised Medical Image Segmentation", IEEE ISBI 2022 (arXiv 2202.00677; AdvMIM ref. [2],
SemSim ref. [12]; the AdvMIM reference list calls it "An exceedingly simple ..."). Reference code:
hritam-98/ICT-MedSeg @99a8032 `main.py` (read via fetch; facts below are from that code unless marked).

What the method is (paper abstract, and the code):
- interpolation consistency on UNLABELED pairs: the student's segmentation of the mixed image
  M_lam(u1, u2) = (1 - lam) u1 + lam u2 must match the same mix of the EMA teacher's softmaxes,
  (1 - lam) softmax(T(u1)) + lam softmax(T(u2)) (the paper writes lam on the first operand; lam ~ a symmetric
  Beta, so the orientation does not matter);
- lam ~ Beta(ict_alpha, ict_alpha) with ict_alpha = 0.2, one per pair, shape (k, 1, 1, 1);
- k = labeled_bs // 2 = 6 pairs: u[:6] with u[6:12] of the 12 unlabeled images (batch 24 = 12 + 12);
- loss = 0.5 * (CE + Dice) on the labeled images + w * mean((softmax(student(mix)) - target)^2),
  w = 0.1 * sigmoid_rampup(iter // 150, 200); the student sees cat([labeled, mixed]) in one pass, the teacher
  sees u1 and u2 in two passes and stays in train mode;
- EMA teacher, decay 0.99 with SSL4MIS's warm-up alpha = min(1 - 1/(t+1), 0.99); the teacher is a separately
  initialised UNet (`create_model(ema=True)`);
- SSL4MIS UNet-2D (`--model unet`), SGD lr 0.01 (momentum 0.9, wd 1e-4) with poly 0.9 decay, 30 000
  iterations, patch 256, best-on-val every 200 iterations, SSL4MIS `val_2D.py` / augmentation.

The released `main.py` is SSL4MIS's `train_interpolation_consistency_training_2D.py` (unchanged there since
f5b9b38, 2020-11, up to 06df604) line for line; `networks/unet.py` (the `unet` path), `dataloaders/dataset.py`
(the older 50/25/25 `RandomGenerator`), `utils/losses.py` and `test.py` (= SSL4MIS `val_2D.py`) are SSL4MIS's
files too. A line diff of the two training scripts (ignoring CRLF) leaves two changes: `test_single_volume` is
imported from `test` instead of `val_2D` (the same function), and the `patients_to_slices` table maps "140" ->
824 slices and a new "300" -> 1024, which the default `--labeled_num 300` selects (1024 labeled slices, not a
few patients). So in code ICT-Med IS the SSL4MIS ICT baseline; this class
reuses `methods.ict.ICT` unchanged (its docstring lists the harness's departures: u1 = u[k:2k] for any
batch shape, torch's RNG for lam, the Trainer's poly convention).

Not verified: the paper's own hyper-parameter text (the PDF is not in the index); the labeled counts behind
the ICT-Med rows of the AdvMIM/SemSim tables (those papers quote the numbers; where they come from is not
stated). A third-party re-implementation found in the index (an SSL benchmark repo, `ICT_MedSeg` for ISIC)
mixes ALL unlabeled pairs and weighs the supervised loss 0.6 Dice + 0.4 CE; that is not the authors' code
and is not offered here.

Why a separate entry: the seed tables list ICT and ICT-Med as two rows with different published numbers.
With the same seed the two give identical runs here — a check, not a bug: the published gap comes from the
papers' protocols, not from the algorithm.
"""
from __future__ import annotations

from dataclasses import dataclass

from methods.base import METHODS
from methods.ict import ICT, ICTConfig


@dataclass
class ICTMedConfig(ICTConfig):
    """hritam-98/ICT-MedSeg `main.py` defaults: ict_alpha 0.2, ema_decay 0.99, consistency 0.1 ramped over 200
    units of 150 iterations."""


@METHODS.register("ict-med", "ICT-Med (Basak et al., ISBI 2022): Beta(0.2,0.2) mixup of unlabeled pairs, "
                             "softmax-MSE to the EMA teacher's mixed softmax; released code = SSL4MIS ICT")
class ICTMed(ICT):
    Config = ICTMedConfig
