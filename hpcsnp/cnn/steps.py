"""The compiled functions a fold runs: the training step (fused or Keras, micro-batched on wide data,
with missing-genotype augmentation), prediction and attribution, over int8 genotypes expanded to
one-hot inside the graph."""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING

import numpy as np

from hpcsnp.cnn.attribution import AttributionSums, fold_attributions, is_gradient
from hpcsnp.cnn.attribution.marginal import MarginalAssociation
from hpcsnp.cnn.data import one_hot
from hpcsnp.cnn.fused import TrainingForward, on_codes, training_forward
from hpcsnp.cnn.model import FastDropout, build_model
from hpcsnp.cnn.readout import AffineReadout, affine_problem

if TYPE_CHECKING:
    from hpcsnp.cnn.train import TargetScale


class CompiledSteps:
    """The model, its optimiser and the compiled functions a fold runs: the training step
    (fused or Keras, micro-batched on wide data), prediction and saliency.  Every step takes
    int8 genotypes and expands the one-hot encoding inside the graph."""

    @classmethod
    def build(cls, n_var: int, cfg, scale: TargetScale, n_threads: int, say, missing_dosage=None) -> "CompiledSteps":
        import keras
        import tensorflow as tf


        self = cls()
        self.cfg, self.scale, self.n_threads, self.n_var = cfg, scale, n_threads, n_var
        self.eval_batch = eval_batch_size(cfg, n_var)
        model = self.model = build_model(n_var, cfg, missing_dosage)
        optimizer = self.optimizer = keras.optimizers.Adam(cfg.learning_rate, epsilon=cfg.adam_epsilon)
        optimizer.build(model.trainable_variables)
        forward = training_forward(model, cfg) if cfg.fuse_convolutions else model
        train_forward = on_codes(forward)  # the same function of the int8 codes, fewer passes
        encode = masked_codes(cfg, optimizer.iterations) if cfg.mask_rate else (lambda g: g)
        self.averages, average = weight_averages(model, optimizer, cfg.weight_average)

        # The training step keeps its batch length in the graph: a graph for any length would
        # save the last short batch's retrace (~0.7 s once) but ran 0.6 s an epoch slower here.
        @tf.function(reduce_retracing=True, autograph=False)
        def train_step(g, t):
            codes = encode(g)
            with tf.GradientTape() as tape:
                pred = train_forward(codes, True)[:, 0]
                mse = tf.reduce_mean(tf.square(pred - t))
                loss = mse + tf.add_n(model.losses)
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
            average()
            return mse

        micro = micro_batch_size(cfg, n_var)
        # the step's graph holds no seed of its own (restart): the fused forward's dropout
        # seeds are variables; the Keras layers' and the augmentation's are constants
        self.restartable = isinstance(forward, TrainingForward) and not cfg.mask_rate and micro >= cfg.batch_size
        self.forward = forward
        if micro < cfg.batch_size:  # wide marker sets: the same update from micro-batches, flat memory
            train_step = _accumulating_step(model, train_forward, optimizer, micro, encode, average)
            say(f"batches of {cfg.batch_size} computed as micro-batches of {micro} "
                f"(--step-activation-mb {cfg.step_activation_mb})")
        self.train_step = train_step

        # traced once for any batch length; autograph off in every step: plain Python, no
        # data-dependent control flow, and its conversion took ~2 s of each fold's first epoch
        @tf.function(input_signature=(tf.TensorSpec((None, n_var), tf.int8),), autograph=False)
        def predict_step(g):  # the same function as model(x), with the fused convolution when on
            # (through the one-hot call: the table of on_codes took ~38 MB more at its batch size)
            return forward(one_hot(g), training=False)[:, 0]
        self.predict_step = predict_step
        # the same predictions by the network's per-SNP effect table, where it is affine (readout.py)
        why = affine_problem(model, cfg)
        self.readout = AffineReadout(model) if why is None else None
        if why is not None:
            say(f"predictions through the convolutions ({why})")
        # Resume state: every variable of the model (weights and the dropout layers' RNG
        # states) and of the optimiser.  (tf.train.Checkpoint on a Keras 3 model misses the
        # model's own variables.)
        self.run_variables = list(model.variables) + list(optimizer.variables) + self.averages
        return self

    def restart(self, cfg, scale: TargetScale, missing_dosage=None) -> bool:
        """Make these compiled functions train another model of the fold, as ``build`` would
        with the same arguments, without tracing them again (~1.3 s a model, and the second
        model's memory): the model's variables take the values of a model built afresh
        under the current Keras seed (its initial weights, dropout counters and seeds, its
        missing-call fill), the optimiser's and the averages' start again.  False, and
        nothing changed, where the settings differ in more than the seed or the step draws
        from a seed its graph holds (``restartable``)."""
        import tensorflow as tf

        if not self.restartable or cfg.replace(seed=self.cfg.seed) != self.cfg:
            return False
        fresh = build_model(self.n_var, cfg, missing_dosage)
        for v, value in zip(self.model.variables, fresh.variables, strict=True):
            v.assign(value)
        for layer, new in zip(self.model.layers, fresh.layers, strict=True):
            if isinstance(layer, FastDropout):
                layer.seed = new.seed
        self.forward.take_seeds()
        for v in self.optimizer.variables:
            v.assign(tf.zeros_like(v))
        self.optimizer.learning_rate.assign(cfg.learning_rate)
        self.start_averages()
        self.cfg, self.scale = cfg, scale
        return True

    @contextlib.contextmanager
    def averaged(self):
        """The model holds the averaged weights inside the block (cfg.weight_average), its
        own after it; without averaging, nothing changes."""
        if not self.averages:
            yield
            return
        params = self.model.trainable_variables
        own = [v.numpy() for v in params]
        self.use_averages()
        try:
            yield
        finally:
            for v, value in zip(params, own):
                v.assign(value)

    def start_averages(self) -> None:
        """The averages start again from the model's weights (a warm refit's loaded ones)."""
        for a, v in zip(self.averages, self.model.trainable_variables):
            a.assign(v)

    def use_averages(self) -> None:
        """The model's weights become the averaged ones (the model kept, when averaging)."""
        for v, a in zip(self.model.trainable_variables, self.averages):
            v.assign(a)

    def predictor(self):
        """A function of a batch's int8 codes: the model's output (float32) with its current
        weights; through the per-SNP effect table where the network is affine (readout.py)."""
        if self.readout is None:
            return lambda g: self.predict_step(g).numpy()
        table = self.readout.table()
        return lambda g: self.readout.predict(g, table)

    def predict(self, src) -> tuple[np.ndarray, np.ndarray]:
        """Predictions in phenotype units and the store rows they belong to."""
        preds, rows = [], []
        predict = self.predictor()
        for g, _, r in src.iterate(self.eval_batch, shuffle=False, threads=self.n_threads):
            preds.append(predict(g))
            rows.append(np.asarray(r))
        rows = np.concatenate(rows)
        return self.scale.back(np.concatenate(preds), rows), rows

    def attributions(self, src) -> AttributionSums:
        """Per gradient attribution method of the settings: the per-SNP sum over ``src``'s
        samples; the count; the seconds each took."""

        methods = [m for m in self.cfg.attribution_methods() if is_gradient(m)]
        readout = None if self.cfg.saliency_dropout else self.readout
        if readout is None:
            return fold_attributions(self.model, self._in_order(src), self.n_var, methods,
                                     training=self.cfg.saliency_dropout)
        # the saliency from the per-SNP effect table (readout.py): no gradient pass; the
        # other methods from the gradients of the same batches
        t = time.perf_counter()
        table = readout.table()
        peak = readout.peak(table)
        saliency, seconds = np.zeros(self.n_var), [time.perf_counter() - t]

        def with_saliency(batches):
            for batch in batches:
                t = time.perf_counter()
                saliency[:] += readout.saliency_sum(batch[0], table, peak)
                seconds.append(time.perf_counter() - t)
                yield batch
        done = fold_attributions(self.model, with_saliency(self._in_order(src)), self.n_var,
                                 [m for m in methods if m != "saliency"])
        sums = {"saliency": saliency, **done.sums}
        return AttributionSums({m: sums[m] for m in methods}, done.n, {**done.seconds, "saliency": sum(seconds)})

    def _in_order(self, src):
        return src.iterate(self.eval_batch, shuffle=False, threads=self.n_threads)

    def marginal(self, src) -> np.ndarray:
        """The ``marginal`` attribution of this model over ``src``'s lines (phenotype units)."""

        acc = MarginalAssociation(self.n_var)
        predict = self.predictor()
        for g, _, _ in src.iterate(self.eval_batch, shuffle=False, threads=self.n_threads):
            acc.add(np.asarray(g), self.scale.back(predict(g)))
        return acc.result()


def weight_averages(model, optimizer, decay: float):
    """([averages], average): one variable per trainable weight and the graph function that
    moves them towards the weights after an optimiser step, by ``decay`` (ramped up as
    (1 + t) / (10 + t) over the first steps t, so that the initial weights fade fast).
    Without averaging ([], a no-op)."""
    import tensorflow as tf


    if not decay:
        return [], lambda: None
    params = model.trainable_variables
    averages = [tf.Variable(v, trainable=False, name=f"average_{i}") for i, v in enumerate(params)]

    def average():
        t = tf.cast(optimizer.iterations, tf.float32)
        d = tf.minimum(tf.constant(decay, tf.float32), (1.0 + t) / (10.0 + t))
        for a, v in zip(averages, params):
            a.assign(d * a + (1.0 - d) * v)
    return averages, average


def masked_codes(cfg, counter):
    """Genotype codes for training with missing-genotype augmentation: each call is set to
    missing (-1) with probability cfg.mask_rate, a fresh mask every optimiser step (stateless
    draws keyed by the seed and the step counter, so a resumed fold draws what the
    uninterrupted one would have).  The model learns not to lean on any single call, and how
    to predict lines with absent SNPs."""
    import tensorflow as tf


    def encode(g):
        seed = tf.stack([tf.constant(cfg.seed * 7919 + 17, tf.int64), tf.cast(counter, tf.int64)])
        drop = tf.random.stateless_uniform(tf.shape(g), seed=seed) < cfg.mask_rate
        return tf.where(drop, tf.constant(-1, g.dtype), g)
    return encode


def micro_batch_size(cfg, n_variants: int) -> int:
    """Rows per compiled training call: the batch, or fewer when one activation tensor
    (rows x SNPs x filters float32) would exceed cfg.step_activation_mb.
    >>> from hpcsnp.config import Config
    >>> micro_batch_size(Config(), 4236), micro_batch_size(Config(), 50000)
    (64, 8)
    """
    per_sample = n_variants * cfg.filters * 4
    return max(1, min(cfg.batch_size, cfg.step_activation_mb * 2**20 // per_sample))


def _accumulating_step(model, forward, optimizer, micro: int, encode, average=lambda: None):
    """train_step(g, t) for a batch too wide to differentiate at once: the gradient of the
    batch's mean squared error is accumulated over micro-batches (each weighted by its
    share of rows), the L2 penalty's added once, and one optimiser update applied: the
    same update as the whole batch (float rounding aside; each micro-batch draws its
    own dropout masks).  Activation memory is that of ``micro`` rows."""
    import tensorflow as tf

    params = model.trainable_variables
    acc = [tf.Variable(tf.zeros_like(v), trainable=False) for v in params]

    @tf.function(reduce_retracing=True, autograph=False)
    def accumulate(g, t, weight):
        with tf.GradientTape() as tape:
            mse = tf.reduce_mean(tf.square(forward(encode(g), True)[:, 0] - t))
            scaled = weight * mse
        for a, grad in zip(acc, tape.gradient(scaled, params)):
            a.assign_add(grad)
        return scaled

    @tf.function(autograph=False)
    def apply():
        with tf.GradientTape() as tape:
            penalty = tf.add_n(model.losses)
        grads = [a + p if p is not None else tf.identity(a) for a, p in zip(acc, tape.gradient(penalty, params))]
        optimizer.apply_gradients(zip(grads, params))
        average()
        for a in acc:
            a.assign(tf.zeros_like(a))

    def train_step(g, t):
        n = int(g.shape[0])
        mse = 0.0
        for s in range(0, n, micro):
            mse += accumulate(g[s:s + micro], t[s:s + micro], tf.constant((min(s + micro, n) - s) / n, tf.float32))
        apply()
        return mse

    return train_step


def eval_batch_size(cfg, n_variants: int) -> int:
    """Prediction/saliency batch: cfg.eval_batch_size, made smaller on wide data so that
    one activation tensor (batch x SNPs x filters float32) stays under cfg.eval_activation_mb;
    the result does not depend on it, the memory does.
    >>> from hpcsnp.config import Config
    >>> eval_batch_size(Config(), 4236), eval_batch_size(Config(), 50000)
    (198, 16)
    """
    per_sample = n_variants * cfg.filters * 4
    return max(1, min(cfg.eval_batch_size, cfg.eval_activation_mb * 2**20 // per_sample))
