"""The fast training step: the model's function with the same parameters, fewer operations.

``TrainingForward`` recomputes the network of ``hpcsnp.cnn.model.build_model`` for training
(see its docstring for how); the Keras model stays what is saved, evaluated and
explained.  It relies on the layer sequence of that model, so ``training_forward``
checks the sequence when it is built and falls back to the Keras model, saying why,
when the model is not that network.
"""

from __future__ import annotations

import logging

import numpy as np
import tensorflow as tf

from hpcsnp.cnn.data import one_hot
from hpcsnp.cnn.model import DOSAGE, ISRU, FastDropout, GenotypeBasis, same_pads
from hpcsnp.genotypes import ONE_HOT_TABLE

logger = logging.getLogger(__name__)

# (name, type, input layer names): the network TrainingForward recomputes
EXPECTED = (
    ("conv1", "Conv1D", ("one_hot",)),
    ("conv2", "Conv1D", ("conv1",)),
    ("dropout1", FastDropout, ("conv2",)),
    ("shortcut", "Conv1D", ("one_hot",)),
    ("residual", "Add", ("shortcut", "dropout1")),
    ("conv3", "Conv1D", ("residual",)),
    ("dropout2", FastDropout, ("conv3",)),
    ("flatten", "Flatten", ("dropout2",)),
    ("dropout3", FastDropout, ("flatten",)),
    ("dense", "Dense", ("dropout3",)),
    ("isru", ISRU, ("dense",)),
)


def layer_sequence_problem(model) -> str | None:
    """Why ``model`` is not the network TrainingForward recomputes, or None when it is.
    A GenotypeBasis layer "basis" may sit between the input and both first convolutions."""
    by_name = {layer.name: layer for layer in model.layers}
    expected = EXPECTED
    if "basis" in by_name:
        if not isinstance(by_name["basis"], GenotypeBasis) or tuple(_input_names(by_name["basis"])) != ("one_hot",):
            return "layer 'basis' is not a GenotypeBasis of the input"
        expected = [(n, k, tuple("basis" if i == "one_hot" else i for i in ins)) for n, k, ins in EXPECTED]
    for name, kind, inputs in expected:
        layer = by_name.get(name)
        if layer is None:
            return f"no layer {name!r}"
        if isinstance(kind, str) and type(layer).__name__ != kind or not isinstance(kind, str) \
                and not isinstance(layer, kind):
            return f"layer {name!r} is a {type(layer).__name__}"
        got = tuple(_input_names(layer))
        if got != inputs:
            return f"layer {name!r} reads {got}, expected {inputs}"
        if type(layer).__name__ == "Conv1D":
            c = layer.get_config()
            if (c["padding"], c["activation"], tuple(c["strides"]), tuple(c["dilation_rate"]), c["use_bias"]) != \
                    ("same", "linear", (1,), (1,), True):
                return f"convolution {name!r} is not linear, 'same', stride 1, undilated, with bias"
    return None


def _input_names(layer) -> list[str]:
    node = layer._inbound_nodes[0]  # the layer's call in the functional model
    return [t._keras_history.operation.name for t in node.input_tensors]


def on_codes(forward):
    """``forward`` (a TrainingForward or a Keras model) as a function of a batch's int8
    genotype codes [b, N]: ``f(codes, training)``."""
    if isinstance(forward, TrainingForward):
        return forward.on_codes
    return lambda codes, training: forward(one_hot(codes), training=training)


def training_forward(model, cfg):
    """A TrainingForward for ``model``, or the model itself (the Keras path, same result,
    slower) when its layer sequence is not the one TrainingForward recomputes."""
    if cfg.activation != "linear":  # expected: the fused step composes linear convolutions
        logger.info(f"activation {cfg.activation}: training through the Keras layers (the fused step composes "
                    "linear convolutions)")
        return model
    problem = layer_sequence_problem(model)
    if problem:
        logger.warning(f"the fused training step does not apply to this model ({problem}); "
                       "training through the Keras layers")
        return model
    return TrainingForward(model, cfg)


def constant_combination(basis) -> np.ndarray | None:
    """c with c . x = 1 for the coordinates x of every call (the rows of the one-hot table,
    or of its map by ``basis``, a GenotypeBasis or None), or None where no such c exists:
    then a bias B of a convolution of the coordinates is the kernel tap B c on the position
    each output stands at, which is a SNP's, never the padding (``TrainingForward.whole_kernel``).
    The one-hot channels sum to 1; the additive basis's missing and called coordinates do.

    >>> constant_combination(None)
    array([1., 1., 1., 1.])
    """
    table = ONE_HOT_TABLE.astype(np.float64) if basis is None else ONE_HOT_TABLE @ basis.matrix.astype(np.float64)
    c = np.linalg.lstsq(table, np.ones(len(table)), rcond=None)[0]
    c[np.abs(c) < 1e-9] = 0.0
    if not np.allclose(table @ c, 1.0, atol=1e-9):
        return None
    if basis is not None and basis.fill_missing and c[DOSAGE]:
        return None  # a missing call's dosage coordinate is its SNP's mean fill, not the table's
    return c


def compose_kernels(w1, w2):
    """Kernel of conv(conv(x, w1), w2) as one convolution: [k1 + k2 - 1, C_in, F].
    K[u] = sum over s + t = u of w1[t] @ w2[s] (TF convolutions are correlations): itself a
    convolution, of w1 [k1, C_in, F1] read as C_in sequences of F1 channels, zero-padded by
    k2 - 1 at each end, with w2 reversed along its positions.  One operation (and two in the
    gradient) instead of k2 products, pads and a sum."""
    k2 = w2.shape[0]
    seqs = tf.pad(tf.transpose(w1, [1, 0, 2]), [[0, 0], [k2 - 1, k2 - 1], [0, 0]])  # [C_in, k1 + 2 (k2 - 1), F1]
    return tf.transpose(tf.nn.conv1d(seqs, tf.reverse(w2, [0]), 1, "VALID"), [1, 0, 2])


@tf.custom_gradient
def _bias_add_low_precision(y, bias):
    """tf.nn.bias_add whose bias gradient is reduce_sum (which accumulates bfloat16 in
    float32) instead of BiasAddGrad, which accumulates in bfloat16 and stalls: summed over
    the 64 x 4,236 positions of a batch it returned 2,080 where the sum is 27,028."""
    def grad(dy):
        return dy, tf.reduce_sum(dy, axis=tf.range(tf.rank(dy) - 1))
    return tf.nn.bias_add(y, bias), grad


@tf.custom_gradient
def _replace_edges(interior, edges, idx):
    """``interior`` with the positions ``idx`` [b, m, 2] set to ``edges`` [b, m, F], as an add
    of their differences.  Its gradient leaves the replaced positions of the interior's
    gradient at zero in place: TF's own gradient of the gather in the differences is a
    dense scatter of zeros added to the whole tensor (two passes over it, ~5 ms a step)."""
    diff = edges - tf.gather_nd(interior, idx)
    out = tf.tensor_scatter_nd_add(interior, idx, diff)

    def grad(dy):
        return tf.tensor_scatter_nd_update(dy, idx, tf.zeros_like(edges)), tf.gather_nd(dy, idx), None
    return out, grad


@tf.custom_gradient
def _dense(y, w):
    """tf.matmul(y, w) for y [b, J] and one output unit w [J, 1], the products oriented with J
    as the long axis of the result (w^T y^T, dout^T y): oneDNN's matrix-vector products with
    J in the rows (what TF's matmul and its gradient run) took 1.7x and 1.5x as long here."""
    out = tf.reshape(tf.matmul(w, y, transpose_a=True, transpose_b=True), [-1, 1])

    def grad(dout):
        return tf.matmul(dout, w, transpose_b=True), tf.reshape(tf.matmul(dout, y, transpose_a=True), [-1, 1])
    return out, grad


# oneDNN's weight gradient of a convolution of the 4 coordinates slows ~4x past some kernel
# length (here past 24 taps in bfloat16, past 14 in float32: bench/RESULTS.md), so the one
# convolution's is computed in pieces of at most this many taps
FILTER_GRAD_TAPS = 13


@tf.custom_gradient
def _conv_valid(xp, kernel):
    """tf.nn.conv1d(xp, kernel, 1, "VALID") (kernel in xp's type) whose kernel gradient is
    computed in pieces of at most FILTER_GRAD_TAPS taps, each the weight gradient of the
    convolution of its own slice of xp: the same sums, grouped by tap."""
    y = tf.nn.conv1d(xp, kernel, 1, "VALID")

    def grad(dy):
        k, c, f = kernel.shape
        size = -(-k // -(-k // FILTER_GRAD_TAPS))  # equal pieces
        n, dy4, x4 = tf.shape(dy)[1], dy[:, None], xp[:, None]
        parts = [tf.raw_ops.Conv2DBackpropFilter(input=x4[:, :, s:s + n + min(size, k - s) - 1],
                                                 filter_sizes=[1, min(size, k - s), c, f], out_backprop=dy4,
                                                 strides=[1, 1, 1, 1], padding="VALID")[0]
                 for s in range(0, k, size)]
        dx = tf.raw_ops.Conv2DBackpropInput(input_sizes=tf.shape(x4), filter=kernel[None], out_backprop=dy4,
                                            strides=[1, 1, 1, 1], padding="VALID")[:, 0]
        return dx, tf.concat(parts, 0)
    return y, grad


class TrainingForward:
    """The model's function computed faster for training, with the same parameters.

    * conv1 and conv2 are linear with nothing between them, so conv2(conv1(x)) is one
      convolution of the one-hot input whose kernel is a differentiable product of the
      two kernels: conv2 needs no input gradient and the pair's forward costs 1,840
      instead of 4,320 FLOPs per SNP and sample.  At each end, where the
      'same' padding of the intermediate makes the composition differ, the outputs are
      computed the original way on a short slice, so the result is the Keras model's to
      float rounding (a test checks it).
    * With no dropout after conv2 (``dropout1`` 0, the default) the residual's two branches
      are linear maps of the same input, and so is conv3 after them: the shortcut's kernel
      is added into the composed one and conv3's composed with the sum, so the whole
      network up to the mask is one convolution of the coordinates (``whole``: 26 taps at
      the default sizes; no shortcut or conv3 convolution, forward or gradient, and no
      add).  Its ends' differences from the layers are not put in place but carried
      through the mask and the dense layer (linear too) on their few positions and added
      to the output (``_edges_out``): no scatter over the whole activation forward or
      backward.  That convolution's weight gradient is computed in pieces of at most
      FILTER_GRAD_TAPS taps (oneDNN's slows ~4x on longer kernels).
    * Where the coordinates of every call have a constant combination c (one-hot channels
      and the additive basis's missing + called sum to 1), the biases are kernel taps B c
      on each output's own position (``constant_combination``): no bias gradient's sum
      over the activation.  The composed kernels are small convolutions of the layers'
      kernels (``compose_kernels``), and the ends' differences are computed on slices
      only as long as they read, both ends as one batch.
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
        layer = model.get_layer
        self.conv1, self.conv2, self.conv3 = layer("conv1"), layer("conv2"), layer("conv3")
        self.shortcut = layer("shortcut")
        self.drop1, self.drop2, self.drop3 = layer("dropout1"), layer("dropout2"), layer("dropout3")
        self.dense, self.isru = layer("dense"), layer("isru")
        self.basis = layer("basis") if any(lr.name == "basis" for lr in model.layers) else None
        k1, k2 = cfg.kernel_1, cfg.kernel_2
        self.l1, self.r1 = same_pads(k1)
        self.l2, self.r2 = same_pads(k2)
        self.span = 2 * (k1 + k2)  # a slice long enough that its own padding cannot reach the edges
        n = model.input.shape[1]
        self.fused = n >= 2 * self.span
        # conv12's ends: the first l2 outputs of the two convolutions read l2 + r1 + r2 positions, the last r2 theirs
        self.pair_span = max(self.l2 + self.r1 + self.r2, self.r2 + self.l1 + self.l2, 1)
        # the layers' own sizes (cfg's kernel sizes made them)
        self.ks, self.k3 = self.shortcut.kernel.shape[0], self.conv3.kernel.shape[0]
        l3, r3 = same_pads(self.k3)
        ls, rs = same_pads(self.ks)
        # the block (conv2 . conv1 + shortcut) as one kernel reaches this far each side, and
        # conv3 . block (the whole network up to the mask, ``whole``) l3 / r3 further
        self.block_reach = max(self.l1 + self.l2, ls), max(self.r1 + self.r2, rs)
        self.reach = self.block_reach[0] + l3, self.block_reach[1] + r3
        # whole's outputs differ from the network's within head of the start, tail of the end
        # (conv2's and conv3's padding), and slices of edge_span positions hold what those read
        self.head, self.tail = self.l2 + l3, self.r2 + r3
        self.edge_span = max(self.head + self.reach[1], self.tail + self.reach[0], 1)
        self.one_block = self.fused and n >= 2 * self.edge_span
        # the biases as kernel taps (constant_combination): no bias gradient's sum over the activation
        self.constant = constant_combination(self.basis)
        self.train_dtype = tf.bfloat16 if cfg.bf16() else tf.float32
        # the dropout layers' seeds as variables of the step, so that a traced step can train
        # another model of the fold (CompiledSteps.restart) without a retrace
        self.seeds = {d.name: tf.Variable(d.seed, dtype=tf.int64, trainable=False) for d in (self.drop1, self.drop2)}

    def take_seeds(self) -> None:
        """The masks draw from the dropout layers' seeds as they are now."""
        for name, seed in self.seeds.items():
            seed.assign(self.model.get_layer(name).seed)

    @staticmethod
    def _conv(x, kernel, bias, padding="SAME"):
        """Convolution + bias in x's type (the float32 weights cast to it).  tf.nn.bias_add,
        which TF's remapper fuses into the convolution, instead of Keras' broadcast add:
        that is a pass of its own (~2.7 ms per 64 x 4,236 x 10 tensor here)."""
        return TrainingForward._add_bias(tf.nn.conv1d(x, tf.cast(kernel, x.dtype), 1, padding), bias)

    @staticmethod
    def _add_bias(y, bias):
        """y + bias (cast to y's type), its gradient summed in float32 where y is bfloat16."""
        bias = tf.cast(bias, y.dtype)
        return tf.nn.bias_add(y, bias) if y.dtype == tf.float32 else _bias_add_low_precision(y, bias)

    def _two_convs(self, x, scale=1.0):
        y1 = self._conv(x, self.conv1.kernel, self.conv1.bias)
        return self._conv(y1, self.conv2.kernel * scale, self.conv2.bias * scale)

    def conv12(self, x, scale=1.0):
        """scale * conv2(conv1(x)) for a one-hot batch [b, N, 4] (the scale, dropout's
        1 / keep, is folded into the small kernels instead of a pass over the output)."""
        if not self.fused:
            return self._two_convs(x, scale)
        w2 = self.conv2.kernel
        n = tf.shape(x)[1]
        k = compose_kernels(self.conv1.kernel, w2) * scale
        xp = tf.pad(x, [[0, 0], [self.l1 + self.l2, self.r1 + self.r2], [0, 0]])
        interior = self._conv(xp, k, self._composed_bias() * scale, "VALID")
        left, right = self._at_ends(x, lambda ends: self._two_convs(ends, scale), self.pair_span, self.l2, self.r2)
        # the edges replaced in place by an add of their differences (a scatter): unlike a
        # slice + concat, no pass over the whole tensor forward or backward
        b = tf.shape(x)[0]
        pos = tf.concat([tf.range(self.l2), tf.range(n - self.r2, n)], 0)
        idx = tf.stack([tf.repeat(tf.range(b), tf.size(pos)), tf.tile(pos, [b])], axis=1)
        idx = tf.reshape(idx, [b, -1, 2])
        return _replace_edges(interior, tf.concat([left, right], axis=1), idx)

    def __call__(self, x, training=True):
        """The model's output for a one-hot batch x [b, N, 4]."""
        # every operation computes in x's type: bfloat16 only for training with --bf16
        x = tf.cast(x, self.train_dtype if training else tf.float32)
        if self.basis is not None:
            x = self.basis.apply(x)
        return self._from_coordinates(x, training)

    def on_codes(self, codes, training=True):
        """The model's output for a batch of int8 genotype codes [b, N] (-1 missing, 0, 1, 2).
        Each call's coordinates (the basis's map of its one-hot vector, or the one-hot vector
        itself) are gathered from a table of the four codes' coordinates, computed in the step
        by the same operations as ``__call__``'s, so the same numbers: one pass over the batch
        instead of four (one-hot, cast, basis map, missing-call fill), ~3.5 ms of a ~55 ms step."""
        dtype = self.train_dtype if training else tf.float32
        index = tf.cast(codes, tf.int32) + 1  # the code's row of ONE_HOT_TABLE
        every_code = tf.constant([[-1], [0], [1], [2]], tf.int8)
        if self.basis is None:
            return self._from_coordinates(tf.gather(tf.cast(one_hot(every_code[:, 0]), dtype), index), training)
        if not self.basis.fill_missing:  # one table for every SNP
            table = self.basis.apply(tf.cast(one_hot(every_code), dtype))[:, 0]
            return self._from_coordinates(tf.gather(table, index), training)
        # the missing code's coordinates depend on the SNP: a table of (SNP, code) rows
        n = tf.shape(codes)[1]
        table = self.basis.apply(tf.cast(one_hot(tf.tile(every_code, [1, n])), dtype))  # [code, SNP, coordinate]
        table = tf.reshape(tf.transpose(table, [1, 0, 2]), [-1, table.shape[-1]])
        return self._from_coordinates(tf.gather(table, index + 4 * tf.range(n)), training)

    def _from_coordinates(self, x, training):
        r1 = self.drop1.rate if training else 0.0
        edges = None
        if self.one_block and not r1:  # nothing between the residual's branches: one convolution
            y, edges = self.whole(x)
        else:
            y = self.conv12(x, 1.0 / (1.0 - r1))
            if r1:
                y = y * self.drop1.keep_mask(y, r1, self.seeds[self.drop1.name])
            y = self._conv(x, self.shortcut.kernel, self.shortcut.bias) + y
            y = self._conv(y, self.conv3.kernel, self.conv3.bias)
        y = tf.reshape(y, [tf.shape(y)[0], -1])
        w = self.dense.kernel
        mask = None
        if training and (self.drop2.rate or self.drop3.rate):
            r = 1.0 - (1.0 - self.drop2.rate) * (1.0 - self.drop3.rate)
            mask = self.drop2.keep_mask(y, r, self.seeds[self.drop2.name])
            y = y * mask
            w = w * (1.0 / (1.0 - r))
        w = tf.cast(w, y.dtype)
        out = _dense(y, w)
        if edges is not None:
            out = out + self._edges_out(edges, mask, w)
        return self.isru(tf.nn.bias_add(tf.cast(out, tf.float32), self.dense.bias))

    def whole(self, x):
        """conv3(shortcut(x) + conv2(conv1(x))) as one convolution of x (``whole_kernel``),
        without the edges' correction: that is returned apart, as the differences [b, head, F]
        and [b, tail, F] between the layers' outputs and the one convolution's at each end
        (see ``_edges_out``)."""
        kernel, bias = self.whole_kernel()
        y = self._whole_conv(x, kernel, bias)

        def difference(ends):  # the layers minus the one convolution
            block = self._two_convs(ends) + self._conv(ends, self.shortcut.kernel, self.shortcut.bias)
            return self._conv(block, self.conv3.kernel, self.conv3.bias) - self._whole_conv(ends, kernel, bias)
        return y, self._at_ends(x, difference, self.edge_span, self.head, self.tail)

    def whole_kernel(self):
        """The kernel [reach[0] + reach[1] + 1, C, F] of conv3 . (conv2 . conv1 + shortcut), and
        its bias, or None where the biases are kernel taps: the block's bias B as the tap B c
        on each block output's own position (B c . x = B at every SNP, 0 in the padding, as
        conv3's padding of the block's outputs is), composed with conv3 like the rest, and
        conv3's bias the tap on the output's own position."""
        left, right = self.l1 + self.l2, self.r1 + self.r2  # the composed kernel's reach
        ls, rs = same_pads(self.ks)
        a = self.block_reach
        block = (tf.pad(compose_kernels(self.conv1.kernel, self.conv2.kernel),
                        [[a[0] - left, a[1] - right], [0, 0], [0, 0]])
                 + tf.pad(self.shortcut.kernel, [[a[0] - ls, a[1] - rs], [0, 0], [0, 0]]))
        bias = self._composed_bias() + self.shortcut.bias
        if self.constant is None:
            return (compose_kernels(block, self.conv3.kernel),
                    tf.einsum("f,sfg->g", bias, self.conv3.kernel) + self.conv3.bias)
        c = tf.constant(self.constant, tf.float32)[:, None]
        block = block + tf.one_hot(a[0], block.shape[0])[:, None, None] * (c * bias)
        kernel = compose_kernels(block, self.conv3.kernel)
        return kernel + tf.one_hot(self.reach[0], kernel.shape[0])[:, None, None] * (c * self.conv3.bias), None

    def _whole_conv(self, x, kernel, bias):
        xp = tf.pad(x, [[0, 0], list(self.reach), [0, 0]])
        y = _conv_valid(xp, tf.cast(kernel, x.dtype))
        return y if bias is None else self._add_bias(y, bias)

    def _at_ends(self, x, f, span, head, tail):
        """f's outputs at the first ``head`` and the last ``tail`` positions, f convolutions
        of x [b, N, C]: f of the two ends' slices of ``span`` positions (as long as those
        outputs read) as one batch of 2b (one operation for both ends, not two)."""
        b, n = tf.shape(x)[0], tf.shape(x)[1]
        y = f(tf.concat([x[:, :span], x[:, n - span:]], axis=0))
        return y[:b, :head], y[b:, span - tail:]

    def _composed_bias(self):
        return tf.einsum("f,sfg->g", self.conv1.bias, self.conv2.kernel) + self.conv2.bias

    def _edges_out(self, edges, mask, w):
        """The output's share of the edges' differences: the mask and the dense layer are
        linear, so the differences pass through them on their own and are added to the
        output: no pass over the whole activation to put them in place.  ``w`` is the dense
        kernel as the step uses it (dropout's scale folded in, in the step's type)."""
        f = self.conv3.kernel.shape[-1]
        out = 0
        for size, part, rows in ((self.head, edges[0], slice(0, self.head * f)),
                                 (self.tail, edges[1], slice(-self.tail * f, None))):
            if size:  # an end without differences (head or tail 0) adds nothing
                part = tf.reshape(part, [tf.shape(part)[0], -1])
                out = out + tf.matmul(part if mask is None else part * mask[:, rows], w[rows])
        return out
