"""The 1-D residual CNN of SPEC section 3, built from a Config.

Layers carry names so a saved model reads like the paper's figure.  Every
convolution is linear; the only non-linearity is the ISRU output.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import layers, regularizers


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
class FastDropout(layers.Layer):
    """Inverted dropout whose mask costs a quarter of Keras' own.

    Keras draws one Philox uniform float per element; here one 32-bit draw is
    bit-cast into four bytes (rate a multiple of 1/256, e.g. 0.75) or two
    16-bit halves (any other rate, quantised to 1/65536), each compared with a
    threshold: the same Bernoulli(1 - rate) mask distribution, scaled by
    1 / (1 - rate).  The draws are stateless, keyed by (seed, step counter);
    the counter is a layer variable, so it is checkpointed with the weights and
    a resumed run draws the masks the uninterrupted run would have.
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

    def keep_mask(self, x, rate):
        """A fresh 0/1 float mask shaped like ``x``, each element kept with probability
        1 - rate, unscaled: a caller that folds 1 / (1 - rate) into the next or previous
        linear map applies it with one multiplication.  (A multiplication by a cast mask
        costs about half of tf.where with a broadcast scalar here.)"""
        byte = rate * 256
        bits = 8 if abs(byte - round(byte)) < 1e-9 else 16
        threshold = round((1.0 - rate) * (1 << bits))
        per_word = 32 // bits
        n = tf.size(x, out_type=tf.int64)
        step = tf.convert_to_tensor(self.counter.value)
        seed = tf.stack([tf.constant(self.seed, tf.int64), step])
        self.counter.assign(step + 1)
        words = tf.random.stateless_uniform([(n + per_word - 1) // per_word], seed=seed, minval=None,
                                            maxval=None, dtype=tf.int32)
        draws = tf.reshape(tf.bitcast(words, tf.uint8 if bits == 8 else tf.uint16), [-1])[:n]
        return tf.cast(tf.reshape(draws < threshold, tf.shape(x)), x.dtype)

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}


def _conv(cfg, kernel, name):
    return layers.Conv1D(cfg.filters, kernel, padding="same", activation="linear",
                         kernel_initializer=keras.initializers.TruncatedNormal(seed=None),
                         kernel_regularizer=regularizers.l2(cfg.l2_kernel),
                         bias_regularizer=regularizers.l2(cfg.l2_bias), name=name)


def build_model(n_snps: int, cfg) -> keras.Model:
    """SPEC section 3: two stacked convolutions plus a shortcut, one more
    convolution, flatten, and a dense ISRU output; dropout after each block."""
    inp = keras.Input((n_snps, 4), name="one_hot")
    x = _conv(cfg, cfg.kernel_1, "conv1")(inp)
    x = _conv(cfg, cfg.kernel_2, "conv2")(x)
    x = FastDropout(cfg.dropout, seed=cfg.seed * 3 + 1, name="dropout1")(x)
    s = _conv(cfg, cfg.kernel_shortcut, "shortcut")(inp)
    x = layers.Add(name="residual")([s, x])
    x = _conv(cfg, cfg.kernel_3, "conv3")(x)
    x = FastDropout(cfg.dropout, seed=cfg.seed * 3 + 2, name="dropout2")(x)
    x = layers.Flatten(name="flatten")(x)
    x = FastDropout(cfg.dropout, seed=cfg.seed * 3 + 3, name="dropout3")(x)
    x = layers.Dense(1, kernel_initializer=keras.initializers.TruncatedNormal(),
                     bias_regularizer=regularizers.l2(cfg.l2_bias), name="dense")(x)
    out = ISRU(cfg.alpha, name="isru")(x)
    return keras.Model(inp, out, name="hpcsnp_resnet")


def compose_kernels(w1, w2):
    """Kernel of conv(conv(x, w1), w2) as one convolution: [k1 + k2 - 1, C_in, F].
    K[u] = sum over s + t = u of w1[t] @ w2[s] (TF convolutions are correlations)."""
    k2 = w2.shape[0]
    return tf.add_n([tf.pad(tf.einsum("tcf,fg->tcg", w1, w2[s]), [[s, k2 - 1 - s], [0, 0], [0, 0]])
                     for s in range(k2)])


def _same_pads(k):
    """TF/Keras 'same' padding of a kernel of size k: (left, right)."""
    return (k - 1) // 2, (k - 1) - (k - 1) // 2


@tf.custom_gradient
def _bias_add_low_precision(y, bias):
    """tf.nn.bias_add whose bias gradient is reduce_sum (which accumulates bfloat16 in
    float32) instead of BiasAddGrad, which accumulates in bfloat16 and stalls: summed over
    the 64 x 4,236 positions of a batch it returned 2,080 where the sum is 27,028."""
    def grad(dy):
        return dy, tf.reduce_sum(dy, axis=tf.range(tf.rank(dy) - 1))
    return tf.nn.bias_add(y, bias), grad


class TrainingForward:
    """The model's function computed faster for training, with the same parameters.

    * conv1 and conv2 are linear with nothing between them, so conv2(conv1(x)) is one
      convolution of the one-hot input whose kernel is a differentiable product of the
      two kernels: conv2 needs no input gradient and the pair's forward costs 1,840
      instead of 4,320 FLOPs per SNP and sample.  At each end, where the
      'same' padding of the intermediate makes the composition differ, the outputs are
      computed the original way on a short slice, so the result is the Keras model's to
      float rounding (a test checks it).
    * dropout2 and dropout3 follow each other with nothing between them: one mask with
      keep probability (1 - r)^2, scaled by its inverse, has the same distribution as
      two masks; it is drawn from dropout2's stream.
    * With ``bf16_step`` the training step computes in bfloat16 (activations, casts of
      the float32 weights; the output cast back to float32 before ISRU and the loss), so
      gradients reach the float32 weights and the optimiser as float32.
    * Dropout's 1 / keep scale is folded into the neighbouring linear map (the composed
      kernel, the dense kernel) and the mask applied as one multiplication; biases are
      added with tf.nn.bias_add, fused into the convolutions, not Keras' broadcast add.
    Parameters, L2 penalties (``model.losses``) and so gradients are those of the
    published parametrisation; the Keras model stays what is saved, evaluated and
    explained.  Used by ``hpcsnp train`` unless ``fuse_convolutions`` is off.
    """

    def __init__(self, model, cfg):
        self.model, self.cfg = model, cfg
        g = model.get_layer
        self.conv1, self.conv2, self.shortcut, self.conv3 = g("conv1"), g("conv2"), g("shortcut"), g("conv3")
        self.drop1, self.drop2, self.drop3 = g("dropout1"), g("dropout2"), g("dropout3")
        self.dense, self.isru = g("dense"), g("isru")
        k1, k2 = cfg.kernel_1, cfg.kernel_2
        self.l1, self.r1 = _same_pads(k1)
        self.l2, self.r2 = _same_pads(k2)
        self.span = 2 * (k1 + k2)  # a slice long enough that its own padding cannot reach the edges
        self.fused = model.input.shape[1] >= 2 * self.span
        self.train_dtype = tf.bfloat16 if getattr(cfg, "bf16_step", False) else tf.float32

    @staticmethod
    def _conv(x, kernel, bias, padding="SAME"):
        """Convolution + bias in x's type (the float32 weights cast to it).  tf.nn.bias_add,
        which TF's remapper fuses into the convolution, instead of Keras' broadcast add:
        that is a pass of its own (~2.7 ms per 64 x 4,236 x 10 tensor here)."""
        y = tf.nn.conv1d(x, tf.cast(kernel, x.dtype), 1, padding)
        bias = tf.cast(bias, x.dtype)
        return tf.nn.bias_add(y, bias) if x.dtype == tf.float32 else _bias_add_low_precision(y, bias)

    def _two_convs(self, x, scale=1.0):
        y1 = self._conv(x, self.conv1.kernel, self.conv1.bias)
        return self._conv(y1, self.conv2.kernel * scale, self.conv2.bias * scale)

    def conv12(self, x, scale=1.0):
        """scale * conv2(conv1(x)) for a one-hot batch [b, N, 4] (the scale, dropout's
        1 / keep, is folded into the small kernels instead of a pass over the output)."""
        if not self.fused:
            return self._two_convs(x, scale)
        w2, b1, b2 = self.conv2.kernel, self.conv1.bias, self.conv2.bias
        n = tf.shape(x)[1]
        k = compose_kernels(self.conv1.kernel, w2) * scale
        xp = tf.pad(x, [[0, 0], [self.l1 + self.l2, self.r1 + self.r2], [0, 0]])
        interior = self._conv(xp, k, (tf.einsum("f,sfg->g", b1, w2) + b2) * scale, "VALID")
        left = self._two_convs(x[:, :self.span], scale)[:, :self.l2]
        right = self._two_convs(x[:, n - self.span:], scale)[:, self.span - self.r2:]
        # the edges replaced in place by an add of their differences (a scatter): unlike a
        # slice + concat, no pass over the whole tensor forward or backward
        b = tf.shape(x)[0]
        pos = tf.concat([tf.range(self.l2), tf.range(n - self.r2, n)], 0)
        idx = tf.stack([tf.repeat(tf.range(b), tf.size(pos)), tf.tile(pos, [b])], axis=1)
        idx = tf.reshape(idx, [b, -1, 2])
        diff = tf.concat([left, right], axis=1) - tf.gather_nd(interior, idx)
        return tf.tensor_scatter_nd_add(interior, idx, diff)

    def __call__(self, x, training=True):
        # every operation computes in x's type: bfloat16 only for training with --bf16
        x = tf.cast(x, self.train_dtype if training else tf.float32)
        r1 = self.drop1.rate if training else 0.0
        y = self.conv12(x, 1.0 / (1.0 - r1))
        if r1:
            y = y * self.drop1.keep_mask(y, r1)
        y = self._conv(x, self.shortcut.kernel, self.shortcut.bias) + y
        y = self._conv(y, self.conv3.kernel, self.conv3.bias)
        y = tf.reshape(y, [tf.shape(y)[0], -1])
        w = self.dense.kernel
        if training and (self.drop2.rate or self.drop3.rate):
            r = 1.0 - (1.0 - self.drop2.rate) * (1.0 - self.drop3.rate)
            y = y * self.drop2.keep_mask(y, r)
            w = w * (1.0 / (1.0 - r))
        out = tf.cast(tf.matmul(y, tf.cast(w, y.dtype)), tf.float32)
        return self.isru(tf.nn.bias_add(out, self.dense.bias))


def flops_per_sample(n_snps: int, cfg) -> dict:
    """Floating-point operations per sample (multiply and add counted apart), by layer
    shape: forward; a training step (forward, weight gradients, and input gradients for
    every layer but the two that read the one-hot input); saliency (forward and input
    gradients all the way to the input); and the training step as TrainingForward runs
    it (``train_step_fused``: the same function with fewer operations).  Element-wise work (bias, dropout, adds) and the
    optimiser are left out: they are O(N) per sample against O(N k c^2)."""
    f, L = cfg.filters, n_snps
    convs = {"conv1": (cfg.kernel_1, 4), "conv2": (cfg.kernel_2, f), "shortcut": (cfg.kernel_shortcut, 4),
             "conv3": (cfg.kernel_3, f)}
    fwd = {name: 2 * k * cin * f * L for name, (k, cin) in convs.items()}
    fwd["dense"] = 2 * f * L
    reads_input = {"conv1", "shortcut"}
    forward = sum(fwd.values())
    train = 2 * forward + sum(v for k, v in fwd.items() if k not in reads_input)
    saliency = 2 * forward
    # the fused training step (TrainingForward): conv1+conv2 as one convolution of the input
    k12 = cfg.kernel_1 + cfg.kernel_2 - 1
    fused_fwd = forward - fwd["conv1"] - fwd["conv2"] + 2 * k12 * 4 * f * L
    fused_train = 2 * fused_fwd + fwd["conv3"] + fwd["dense"]
    return {"forward": forward, "train_step": train, "saliency": saliency, "train_step_fused": fused_train,
            "by_layer_forward": fwd}
