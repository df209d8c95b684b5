"""Where a training process's memory goes: RSS (and its anonymous / file-backed parts)
after each stage of what `hpcsnp train` does, in one process on random genotypes.

Stages: Python + NumPy; importing TensorFlow (which imports Keras); zarr and pandas;
the model and its optimiser; tracing the (fused) training step; its first call (graph
optimisation, oneDNN primitives, activations of one batch); more steps; a prediction
batch; a saliency batch.  Each line is cumulative (VmHWM is the peak so far).

usage: python bench/memory_stages.py [--snps 4236] [--batch 64] [--eval-batch 198]
"""
import argparse

import numpy as np


def status() -> dict:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                out[k] = int(v.split()[0]) // 1024
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--snps", type=int, default=4236)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--eval-batch", type=int, default=198)
    a = ap.parse_args()

    def say(stage):
        s = status()
        print(f"{stage:44s} peak {s['VmHWM']:5d} MB  now {s['VmRSS']:5d} = anon {s['RssAnon']:4d} + file "
              f"{s['RssFile']:4d}", flush=True)

    say("python + numpy")
    from hpcsnp.resources import configure_tensorflow

    configure_tensorflow(1)
    import keras
    import tensorflow as tf

    say("import tensorflow (and with it keras)")
    import pandas  # noqa: F401
    import zarr  # noqa: F401

    say("+ zarr, pandas")
    from hpcsnp.cnn.attribution import make_gradient_saliency
    from hpcsnp.cnn.data import one_hot
    from hpcsnp.cnn.fused import TrainingForward
    from hpcsnp.cnn.model import build_model
    from hpcsnp.config import Config

    cfg, n = Config(), a.snps
    model = build_model(n, cfg)
    opt = keras.optimizers.Adam(cfg.learning_rate)
    opt.build(model.trainable_variables)
    forward = TrainingForward(model, cfg)
    say("model + optimiser built")

    @tf.function(autograph=False)
    def step(g, t):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(forward(one_hot(g), training=True)[:, 0] - t)) + tf.add_n(model.losses)
        opt.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
        return loss

    rng = np.random.default_rng(0)
    g = rng.integers(-1, 3, (a.batch, n)).astype(np.int8)
    t = rng.standard_normal(a.batch).astype(np.float32)
    step.get_concrete_function(tf.TensorSpec(g.shape, tf.int8), tf.TensorSpec(t.shape, tf.float32))
    say("training step traced")
    step(g, t)
    say("first step (graph optimised and run)")
    for _ in range(20):
        step(g, t)
    say("20 more steps")

    @tf.function(autograph=False)
    def predict(x):
        return forward(one_hot(x), training=False)[:, 0]

    ge = rng.integers(-1, 3, (a.eval_batch, n)).astype(np.int8)
    predict(ge)
    say(f"prediction batch of {a.eval_batch}")
    make_gradient_saliency(model, encoded=False)(ge)
    say(f"saliency batch of {a.eval_batch}")


if __name__ == "__main__":
    main()
