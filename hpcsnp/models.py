"""The registry of the models a run holds: the one name each goes by in metrics, tables,
prediction columns and figures, and the baseline kind (``hpcsnp baseline --encoding``) it
is trained as.  Every stage names models through this module; adding an ensemble member
is one entry here and its fitting code in ``linear/`` (or ``cnn/``).

>>> model_name("dosage"), model_name("rkhs"), baseline_kind("gblup_onehot")
('gblup_dosage', 'rkhs', 'onehot')
"""

from __future__ import annotations

ENCODINGS = ("dosage", "onehot")  # the two GBLUP designs: allele dosage and one-hot genotype codes
KERNELS = ("rkhs", "rkhs_local")  # Gaussian-kernel RKHS: chosen width, and a fixed narrow one
# every baseline kind: GBLUP in each encoding, the Gaussian-kernel RKHS, and the same with a narrow kernel
KINDS = (*ENCODINGS, *KERNELS)
CNN = "cnn"
ENSEMBLE = "ensemble"


def model_name(kind: str) -> str:
    """The name a baseline kind is reported as: gblup_dosage, gblup_onehot, rkhs, rkhs_local."""
    return kind if kind in KERNELS else f"gblup_{kind}"


def baseline_kind(model: str) -> str:
    """The baseline kind of a reported model name (the inverse of ``model_name``)."""
    return model if model in KERNELS else model.removeprefix("gblup_")


BASELINE_MODELS = tuple(model_name(k) for k in KINDS)  # gblup_dosage, gblup_onehot, rkhs, rkhs_local
# the linear yardsticks: every other model (the CNN, RKHS, the ensemble) is compared with them
LINEAR_MODELS = tuple(model_name(e) for e in ENCODINGS)
