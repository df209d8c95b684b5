"""The 1-D residual CNN of docs/method.md, Model, built from a Config.

Layers carry names so a saved model reads like the paper's figure.  As published every
convolution is linear and the only non-linearity is the ISRU output, so the network is
a linear function of the one-hot input up to that bounded output; ``activation`` (an
option) puts a non-linearity on every convolution, so it can also represent
interactions between SNPs within its receptive field (k1 + k2 + k3 - 2 = 26 SNPs).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import layers, regularizers

from hpcsnp.genotypes import ONE_HOT_TABLE

# Per-SNP coordinates the convolutions read (GenotypeBasis), by genotype code (-1 missing,
# 0, 1, 2 copies of the counted allele).  "additive": missing, centred allele dosage (-1, 0, 1),
# heterozygote, called -- the additive-dominance coding of quantitative genetics.  It is an
# invertible map of the one-hot channels, so the network represents exactly the functions it
# does on them ("onehot", the publication's); only what training reaches first differs: an
# additive effect is one weight, not a contrast of three.
CODED = {"additive": np.array([[1, 0, 0, 0],    # -1 missing
                               [0, -1, 0, 1],   # 0
                               [0, 0, 1, 1],    # 1
                               [0, 1, 0, 1]],   # 2
                              dtype=np.float32)}
# the same as maps of the one-hot channels (ONE_HOT_TABLE's rows are the codes' one-hot vectors,
# a permutation): one_hot(code) @ BASES[b] = CODED[b][code + 1]
BASES = {"onehot": None, **{b: (ONE_HOT_TABLE.T @ m).astype(np.float32) for b, m in CODED.items()}}
DOSAGE = 1  # the dosage coordinate's column in CODED["additive"]


def basis_matrix(basis: str, dosage_scale: float = 1.0):
    """BASES[basis] with the dosage coordinate multiplied by ``dosage_scale`` (codes 0 / 1 / 2
    -> -s / 0 / s): still invertible for s > 0, so the same functions; with the same initial
    kernels and kernel L2 a larger s lets additive effects grow faster and penalises them
    less than dominance and missing-call effects (a prior of larger additive variance)."""
    if BASES[basis] is None:
        return None
    scale = np.ones(4, np.float32)
    scale[DOSAGE] = dosage_scale
    return BASES[basis] * scale  # float32 both


@keras.saving.register_keras_serializable(package="hpcsnp")
class ISRU(layers.Layer):
    """Inverse square root unit, x / sqrt(1 + alpha x^2); bounded by +-1/sqrt(alpha)."""

    def __init__(self, alpha=0.03, **kwargs):
        super().__init__(**kwargs)
        self.alpha = float(alpha)

    def call(self, x):
        return x * tf.math.rsqrt(1.0 + self.alpha * tf.square(x))

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha}


@keras.saving.register_keras_serializable(package="hpcsnp")
class GenotypeBasis(layers.Layer):
    """A fixed linear map of each SNP's one-hot channels to the coordinates of ``BASES[basis]``;
    no trainable weights.  The model's input stays the one-hot genotype, so saliency, SmoothGrad
    and integrated gradients are taken with respect to it, as published.

    With ``fill_missing`` a missing call takes, in the dosage coordinate, the SNP's mean
    centred dosage over the training lines (``missing_dosage``, a per-SNP weight set by
    ``set_missing_dosage`` and saved with the model) instead of 0, the heterozygote's: the mean
    fill GBLUP uses, with the missing coordinate left for what departs from it.  Still an
    invertible map of each SNP's one-hot channels (the missing row gains a multiple of the
    dosage row's span), so the same functions."""

    def __init__(self, basis="additive", dosage_scale=1.0, fill_missing=False, **kwargs):
        super().__init__(**kwargs)
        self.basis = basis
        self.dosage_scale = float(dosage_scale)
        self.fill_missing = bool(fill_missing)
        self.matrix = basis_matrix(basis, self.dosage_scale)

    def build(self, input_shape):
        if self.fill_missing:
            self.missing_dosage = self.add_weight(name="missing_dosage", shape=(input_shape[-2],),
                                                  initializer="zeros", trainable=False)

    def set_missing_dosage(self, mean_dosage) -> None:
        """The centred dosage (-1..1) each SNP's missing calls read as, before the scale."""
        self.missing_dosage.assign(np.asarray(mean_dosage, np.float32))

    def call(self, x):
        return self.apply(x)

    def apply(self, x):
        """The map in x's own type (a Keras layer call would cast a bfloat16 x to float32)."""
        y = tf.tensordot(x, tf.constant(self.matrix, dtype=x.dtype), axes=[[x.shape.rank - 1], [0]])
        if not self.fill_missing:
            return y
        fill = tf.cast(self.missing_dosage * self.dosage_scale, x.dtype)
        # the missing channel is the one-hot's first (ONE_HOT_TABLE): its calls gain the fill as dosage
        return y + (x[..., 0] * fill)[..., None] * tf.constant(np.eye(4, dtype=np.float32)[DOSAGE], dtype=x.dtype)

    def get_config(self):
        return {**super().get_config(), "basis": self.basis, "dosage_scale": self.dosage_scale,
                "fill_missing": self.fill_missing}


def fills_missing(cfg) -> bool:
    """Whether the model's basis reads missing calls at a per-SNP mean dosage (``cfg.missing_dosage``
    "mean" with a basis layer; the one-hot channels have no dosage coordinate)."""
    return cfg.missing_dosage == "mean" and BASES[cfg.genotype_basis] is not None


def mask_bits(rate: float) -> int:
    """Bits of a random word per mask element: the fewest (4, 8 or 16) that give ``rate``
    exactly, 16 (rate quantised to 1/65536) where none does.

    >>> [mask_bits(r) for r in (0.25, 0.4375, 0.75, 66 / 256, 0.3)]
    [4, 4, 4, 8, 16]
    """
    for bits in (4, 8):
        units = rate * (1 << bits)
        if 0 < rate < 1 and abs(units - round(units)) < 1e-9:
            return bits
    return 16


def _mix32(x):
    """A bijection of uint32 words with strong avalanche (C. Wellons' "lowbias32": two
    xor-shift-multiply rounds and a final xor-shift), elementwise."""
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, tf.constant(16, tf.uint32)))
    x = x * tf.constant(0x7FEB352D, tf.uint32)
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, tf.constant(15, tf.uint32)))
    x = x * tf.constant(0x846CA68B, tf.uint32)
    return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, tf.constant(16, tf.uint32)))


def random_words(n, seed, step):
    """``n`` pseudo-random uint32 words keyed by (seed, step), int64 scalars: word i is
    mix(mix(i * odd) ^ key), a counter-based generator (like Philox, stateless: the same
    key gives the same words), the key itself a mix of the seed and the step.  Half the
    time of TF's Philox per word here (12 elementwise passes over the words against
    Philox's 10 rounds); the masks' statistics are tested.  The key has 32 bits (Philox's
    64): seeds that differ by a multiple of 2^32 draw the same masks."""
    as_u32 = lambda v: tf.bitcast(tf.cast(v, tf.int32), tf.uint32)  # noqa: E731 (the low 32 bits)
    key = _mix32(_mix32(as_u32(seed) ^ tf.constant(0x9E3779B9, tf.uint32)) ^ as_u32(step))
    i = tf.bitcast(tf.range(n, dtype=tf.int32), tf.uint32)
    return _mix32(tf.bitwise.bitwise_xor(_mix32(i * tf.constant(0x9E3779B1, tf.uint32)), key))


@keras.saving.register_keras_serializable(package="hpcsnp")
class FastDropout(layers.Layer):
    """Inverted dropout whose mask costs an eighth to a half of Keras' own.

    Keras draws one Philox uniform float per element; here one 32-bit word
    (``random_words``, a counter-based hash at half Philox's cost) is split into
    eight nibbles (rate a multiple of 1/16, e.g. 0.75, or 0.4375 for two of 0.25
    merged), four bytes (a multiple of 1/256) or two 16-bit halves
    (any other rate, quantised to 1/65536), each compared with a threshold: the
    same Bernoulli(1 - rate) mask distribution, scaled by 1 / (1 - rate).  The
    draws are stateless, keyed by (seed, step counter); the counter is a layer
    variable, so it is checkpointed with the weights and a resumed run draws the
    masks the uninterrupted run would have.
    """

    def __init__(self, rate, seed=0, **kwargs):
        super().__init__(**kwargs)
        self.rate = float(rate)
        self.seed = int(seed)

    def build(self, input_shape):
        self.counter = self.add_weight(name="counter", shape=(), dtype="int64", initializer="zeros",
                                       trainable=False)

    def call(self, x, training=False):
        if not training or self.rate == 0.0:
            return x
        return self.drop(x, self.rate)

    def drop(self, x, rate):
        """Apply a fresh mask of the given rate (the layer's own, or the product rate of
        this layer and the next when the training step merges two in a row)."""
        return x * (self.keep_mask(x, rate) * (1.0 / (1.0 - rate)))

    def keep_mask(self, x, rate, seed=None):
        """A fresh 0/1 float mask shaped like ``x``, each element kept with probability
        1 - rate (0 < rate < 1), unscaled: a caller that folds 1 / (1 - rate) into the next or previous
        linear map applies it with one multiplication.  (A multiplication by a cast mask
        costs about half of tf.where with a broadcast scalar here.)  ``seed``: an int64
        tensor holding the layer's seed (a variable, so that a traced step can change it),
        or None for the seed itself, a constant of the graph."""
        bits = mask_bits(rate)
        threshold = round((1.0 - rate) * (1 << bits))
        per_word = 32 // bits
        n = x.shape.num_elements()  # known when traced for one batch length, as the training step is
        exact = n is not None and n % per_word == 0  # no tail of the last word to cut (a copy of the mask)
        if n is None:
            n = tf.size(x, out_type=tf.int64)
        step = tf.convert_to_tensor(self.counter.value)
        self.counter.assign(step + 1)
        words = random_words((n + per_word - 1) // per_word, tf.constant(self.seed, tf.int64) if seed is None
                             else seed, step)
        if bits == 4:  # each byte's high nibble (byte < 16 t), then its low one, as two halves
            b = tf.reshape(tf.bitcast(words, tf.uint8), [-1])
            keep = tf.concat([b < threshold << 4, tf.bitwise.bitwise_and(b, 15) < threshold], 0)
        else:
            keep = tf.reshape(tf.bitcast(words, tf.uint8 if bits == 8 else tf.uint16), [-1]) < threshold
        return tf.cast(tf.reshape(keep if exact else keep[:n], tf.shape(x)), x.dtype)

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}


def _conv(cfg, kernel, name):
    return layers.Conv1D(cfg.filters, kernel, padding="same", activation=cfg.activation,
                         kernel_initializer=keras.initializers.TruncatedNormal(seed=None),
                         kernel_regularizer=regularizers.l2(cfg.l2_kernel),
                         bias_regularizer=regularizers.l2(cfg.l2_bias), name=name)


def build_model(n_snps: int, cfg, missing_dosage=None) -> keras.Model:
    """docs/method.md, Model: two stacked convolutions plus a shortcut, one more
    convolution, flatten, and a dense ISRU output; dropout after each block (the first
    block's at ``cfg.first_dropout()``, by default 0: the layer is kept, inactive).  With a
    genotype basis other than "onehot" the convolutions read the one-hot input through
    a fixed GenotypeBasis layer; with ``cfg.missing_dosage`` "mean" its missing calls read as
    ``missing_dosage`` (per SNP, centred; ``mean_dosage`` of the training lines)."""
    inp = keras.Input((n_snps, 4), name="one_hot")
    coded = inp if BASES[cfg.genotype_basis] is None else GenotypeBasis(
        cfg.genotype_basis, cfg.dosage_scale, fill_missing=fills_missing(cfg), name="basis")(inp)
    x = _conv(cfg, cfg.kernel_1, "conv1")(coded)
    x = _conv(cfg, cfg.kernel_2, "conv2")(x)
    x = FastDropout(cfg.first_dropout(), seed=cfg.seed * 3 + 1, name="dropout1")(x)
    s = _conv(cfg, cfg.kernel_shortcut, "shortcut")(coded)
    x = layers.Add(name="residual")([s, x])
    x = _conv(cfg, cfg.kernel_3, "conv3")(x)
    x = FastDropout(cfg.dropout, seed=cfg.seed * 3 + 2, name="dropout2")(x)
    x = layers.Flatten(name="flatten")(x)
    x = FastDropout(cfg.dropout, seed=cfg.seed * 3 + 3, name="dropout3")(x)
    init = keras.initializers.Zeros() if cfg.dense_init == "zeros" else keras.initializers.TruncatedNormal()
    x = layers.Dense(1, kernel_initializer=init,
                     kernel_regularizer=regularizers.l2(cfg.l2_dense) if cfg.l2_dense else None,
                     bias_regularizer=regularizers.l2(cfg.l2_bias), name="dense")(x)
    out = ISRU(cfg.alpha, name="isru")(x)
    model = keras.Model(inp, out, name="hpcsnp_resnet")
    if missing_dosage is not None and fills_missing(cfg):
        model.get_layer("basis").set_missing_dosage(missing_dosage)
    return model


def same_pads(*kernels: int) -> tuple[int, int]:
    """The positions before and after its own that an output of TF/Keras 'same' convolutions
    of these sizes in a row reads.

    >>> same_pads(4), same_pads(4, 20), same_pads(1)
    ((1, 2), (10, 12), (0, 0))
    """
    return sum((k - 1) // 2 for k in kernels), sum(k // 2 for k in kernels)


def flops_per_sample(n_snps: int, cfg) -> dict:
    """Floating-point operations per sample (multiply and add counted apart), by layer
    shape: forward; a training step (forward, weight gradients, and input gradients for
    every layer but the two that read the one-hot input); saliency (forward and input
    gradients all the way to the input); and the training step as TrainingForward runs
    it (``train_step_fused``: the same function with fewer operations).  Element-wise work
    (bias, dropout, adds) and the optimiser are left out: they are O(N) per sample against
    O(N k c^2)."""
    f, L = cfg.filters, n_snps
    convs = {"conv1": (cfg.kernel_1, 4), "conv2": (cfg.kernel_2, f), "shortcut": (cfg.kernel_shortcut, 4),
             "conv3": (cfg.kernel_3, f)}
    fwd = {name: 2 * k * cin * f * L for name, (k, cin) in convs.items()}
    fwd["dense"] = 2 * f * L
    reads_input = {"conv1", "shortcut"}
    forward = sum(fwd.values())
    train = 2 * forward + sum(v for k, v in fwd.items() if k not in reads_input)
    saliency = 2 * forward
    # the fused training step (TrainingForward): conv1+conv2 as one convolution of the input;
    # with no dropout between the residual's branches the shortcut added into its kernel and
    # conv3 composed with it, so the whole network up to the mask is one convolution
    k12 = cfg.kernel_1 + cfg.kernel_2 - 1
    if cfg.first_dropout():
        fused_fwd = forward - fwd["conv1"] - fwd["conv2"] + 2 * k12 * 4 * f * L
        fused_train = 2 * fused_fwd + fwd["conv3"] + fwd["dense"]
    else:
        reach = [max(a, b) + c for a, b, c in zip(same_pads(cfg.kernel_1, cfg.kernel_2),
                                                  same_pads(cfg.kernel_shortcut), same_pads(cfg.kernel_3))]
        fused_fwd = 2 * (sum(reach) + 1) * 4 * f * L + fwd["dense"]
        fused_train = 2 * fused_fwd + fwd["dense"]
    return {"forward": forward, "train_step": train, "saliency": saliency, "train_step_fused": fused_train,
            "by_layer_forward": fwd}
