"""Probe for issue 6 (performance): conv2(conv1(x)) as ONE convolution of the one-hot input.

conv1 (k=4) and conv2 (k=20) are linear with no dropout between them, so their
composition is a k=23 convolution whose kernel is a differentiable product of
W1 and W2 (same parameters, same L2 penalties, same gradients); only the
outputs at each end, where 'same' padding of the intermediate matters, are
computed the original way on short slices.  Training FLOPs per sample fall from
~67 M to ~29 M at 4,236 SNPs.

Measured here (2026-11-25, 2-core EPYC, one core busy with another job), training
steps/s on random one-hot input, 4,236 SNPs:
    batch 4:  Keras 339 samples/s, fused 354 samples/s
    batch 64: Keras 445 samples/s, fused 508 samples/s
    max |fused - keras| output difference 4.8e-07; penalties equal.
So the thin convolutions are not FLOP-bound: per-op timings at batch 64 show
26-74 GFLOP/s and large backward costs; dropout RNG, the shortcut/conv3
backward and the optimiser remain.  Not wired into training yet.

usage: python bench/probe_fused_conv.py [THREADS]
"""
import os, sys, time
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
import numpy as np, tensorflow as tf, keras
from hpcsnp.config import Config
from hpcsnp.model import build_model
from hpcsnp.data import one_hot
def compose_kernels(w1, w2):
    """Kernel of conv(conv(x, w1), w2) as one convolution: [k1+k2-1, C_in, F].
    K[u] = sum over s + t = u of w1[t] @ w2[s] (TF convolutions are correlations)."""
    k2 = w2.shape[0]
    return tf.add_n([tf.pad(tf.einsum("tcf,fg->tcg", w1, w2[s]), [[s, k2 - 1 - s], [0, 0], [0, 0]])
                     for s in range(k2)])


def _same_pads(k):
    """TF/Keras 'same' padding of a kernel of size k: (left, right)."""
    return (k - 1) // 2, (k - 1) - (k - 1) // 2


class FusedForward:
    """The model's function, computed faster for training: conv2(conv1(x)) is one
    convolution of the one-hot input with the composed kernel (linear layers, no
    dropout between them), so conv2 needs no input gradient and 57 % fewer
    multiply-adds.  The ``edge`` outputs at each end, where 'same' padding of the
    intermediate makes the composition differ, are computed the original way on a
    short slice, so the result equals the Keras model's (to float rounding).  The
    parameters, their L2 penalties and the gradients are those of the published
    parametrisation; the Keras model remains what is saved and loaded.
    """

    def __init__(self, model, cfg):
        self.model, self.cfg = model, cfg
        self.conv1, self.conv2 = model.get_layer("conv1"), model.get_layer("conv2")
        self.shortcut, self.conv3 = model.get_layer("shortcut"), model.get_layer("conv3")
        self.drop = [model.get_layer(f"dropout{i}") for i in (1, 2, 3)]
        self.dense, self.isru = model.get_layer("dense"), model.get_layer("isru")
        k1, k2 = cfg.kernel_1, cfg.kernel_2
        self.l1, self.r1 = _same_pads(k1)
        self.l2, self.r2 = _same_pads(k2)
        self.span = 2 * (k1 + k2)  # slice long enough that its own padding cannot reach the edges
        n = model.input.shape[1]
        self.fused = n >= 2 * self.span

    def _two_convs(self, x):
        w1, b1 = self.conv1.kernel, self.conv1.bias
        w2, b2 = self.conv2.kernel, self.conv2.bias
        y1 = tf.nn.conv1d(x, w1, 1, "SAME") + b1
        return tf.nn.conv1d(y1, w2, 1, "SAME") + b2

    def conv12(self, x):
        if not self.fused:
            return self._two_convs(x)
        w1, b1 = self.conv1.kernel, self.conv1.bias
        w2, b2 = self.conv2.kernel, self.conv2.bias
        n = tf.shape(x)[1]
        k = compose_kernels(w1, w2)
        xp = tf.pad(x, [[0, 0], [self.l1 + self.l2, self.r1 + self.r2], [0, 0]])
        interior = tf.nn.conv1d(xp, k, 1, "VALID") + (tf.einsum("f,sfg->g", b1, w2) + b2)
        left = self._two_convs(x[:, :self.span])[:, :self.l2]
        right = self._two_convs(x[:, n - self.span:])[:, self.span - self.r2:]
        return tf.concat([left, interior[:, self.l2:n - self.r2], right], axis=1)

    def __call__(self, x, training=False):
        y = self.drop[0](self.conv12(x), training=training)
        y = self.conv3(self.shortcut(x) + y)
        y = self.drop[1](y, training=training)
        y = self.drop[2](tf.reshape(y, [tf.shape(y)[0], -1]), training=training)
        return self.isru(self.dense(y))

    def penalty(self):
        """The L2 terms of SPEC section 3, as the layers' regularisers define them."""
        c = self.cfg
        convs = (self.conv1, self.conv2, self.shortcut, self.conv3)
        return (c.l2_kernel * tf.add_n([tf.reduce_sum(tf.square(l.kernel)) for l in convs])
                + c.l2_bias * tf.add_n([tf.reduce_sum(tf.square(l.bias)) for l in (*convs, self.dense)]))


th = int(sys.argv[1]) if len(sys.argv) > 1 else 2
tf.config.threading.set_intra_op_parallelism_threads(th); tf.config.threading.set_inter_op_parallelism_threads(min(th,2))
cfg = Config(); N = 4236
keras.utils.set_random_seed(0)
m = build_model(N, cfg)
for v in m.trainable_variables: v.assign(tf.random.normal(v.shape, stddev=0.3))
f = FusedForward(m, cfg)
x = one_hot(np.random.default_rng(0).integers(-1, 3, (8, N)).astype(np.int8))
a = m(x, training=False).numpy(); b = f(x).numpy()
print("max |fused - keras|", np.abs(a - b).max(), "scale", np.abs(a).max())
print("penalty", float(f.penalty()), float(tf.add_n(m.losses)) if m.losses else None)
opt = keras.optimizers.Adam(1e-3); opt.build(m.trainable_variables)
def mk(fn, pen):
    @tf.function
    def step(x, t):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(fn(x, training=True)[:, 0] - t)) + pen()
        g = tape.gradient(loss, m.trainable_variables); opt.apply_gradients(zip(g, m.trainable_variables)); return loss
    return step
steps = {"keras": mk(lambda x, training: m(x, training=training), lambda: tf.add_n(m.losses)), "fused": mk(f, f.penalty)}
for b in (4, 64):
    xb = tf.random.uniform((b, N, 4)); t = tf.zeros((b,))
    for name, st in steps.items():
        st(xb, t); n = 1600 // b; t0 = time.perf_counter()
        for _ in range(n): st(xb, t)
        dt = time.perf_counter() - t0
        print(f"batch {b:3d} {name}: {n*b/dt:6.0f} samples/s")
