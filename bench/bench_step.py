"""Training-step and saliency throughput of the model alone (no input pipeline), one lever at a time.

Random int8 genotypes, one-hot inside the compiled step as in training, 4,236 SNPs
by default.  Prints samples/s and achieved GFLOP/s for: the shipped step
(fused.TrainingForward: conv1+conv2 fused, final dropouts merged); the unfused
step (every Keras layer, FastDropout); that with Keras' own Dropout layers (the
lever FastDropout replaced); the shipped step without dropout (the floor of the
convolutions); jit_compile (XLA); with --bf16 the Keras layers under mixed_bfloat16,
the shipped bfloat16 step and that step without dropout; and saliency.  GFLOP/s count the operations
each variant runs (hpcsnp.cnn.model.flops_per_sample: train_step_fused for the fused
ones); "equiv." is the published model's count per sample x samples/s.  `--pair` runs two copies
at once with 1 thread each (what `hpcsnp cv` does on 2 cores) and reports their
sum.  `--filters 20` times the network with twice the filters: more work than two
10-filter models trained in one step on the same batches, so a bound on that lever.

usage: python bench/bench_step.py [--batch 64] [--threads 2] [--snps 4236] [--filters 10] [--seconds 8] [--pair]
       python bench/bench_step.py --profile 25 --threads 1 [--bf16]
       python bench/bench_step.py --kernel-lengths 13,24,25,26 --threads 1

``--kernel-lengths``: the first convolution alone (4 coordinates in, the filters out, 'valid'
over the batch's SNPs) at each kernel length, its forward and weight gradient, the gradient
in one oneDNN call or in pieces of at most hpcsnp.cnn.fused.FILTER_GRAD_TAPS taps as the step
computes it, bfloat16 and float32: where oneDNN's weight gradient slows down.
"""
import argparse
import json
import os
import subprocess
import sys
import time


def measure(args) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np

    from hpcsnp.resources import configure_tensorflow

    configure_tensorflow(args.threads)
    import keras
    import tensorflow as tf

    import hpcsnp.cnn.fused as hf
    import hpcsnp.cnn.model as hm
    from hpcsnp.cnn.attribution import make_gradient_saliency
    from hpcsnp.cnn.data import one_hot
    from hpcsnp.config import Config

    cfg = Config(batch_size=args.batch, filters=args.filters)
    fl = hm.flops_per_sample(args.snps, cfg)
    rng = np.random.default_rng(0)
    g = tf.constant(rng.integers(-1, 3, (args.batch, args.snps)).astype(np.int8))
    t = tf.constant(rng.standard_normal(args.batch).astype(np.float32))

    def build(variant):
        fast = hm.FastDropout
        if variant == "keras_dropout":
            hm.FastDropout = lambda rate, seed=0, name=None: keras.layers.Dropout(rate, seed=seed, name=name)
        if variant == "bf16":  # Keras layers compute in bfloat16, variables stay float32
            keras.mixed_precision.set_global_policy("mixed_bfloat16")
        try:
            model = hm.build_model(args.snps, cfg.replace(dropout=0.0) if variant == "no_dropout" else cfg)
        finally:
            hm.FastDropout = fast
            keras.mixed_precision.set_global_policy("float32")
        return model

    def step_fn(model, jit, fused, bf16=False):
        opt = keras.optimizers.Adam(cfg.learning_rate)
        opt.build(model.trainable_variables)
        forward = hf.on_codes(hf.TrainingForward(model, cfg.replace(bf16_step=bf16)) if fused else model)

        @tf.function(jit_compile=jit)
        def step(g, t):
            with tf.GradientTape() as tape:
                p = tf.cast(forward(g, True)[:, 0], tf.float32)  # from the int8 codes, as training does
                loss = tf.reduce_mean(tf.square(p - t)) + tf.add_n(model.losses)
            grads = tape.gradient(loss, model.trainable_variables)
            opt.apply_gradients(zip(grads, model.trainable_variables))
            return loss
        return lambda: step(g, t)

    def rate(fn, budget):
        fn()
        fn()  # traced and warm
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < budget:
            float(tf.reduce_sum(fn()))
            n += 1
        return n * args.batch / (time.perf_counter() - t0)

    out = {}
    for variant, jit, fused in (("shipped", False, True), ("unfused", False, False),
                                ("keras_dropout", False, False), ("no_dropout", False, True), ("xla", True, True),
                                ("bf16", False, False), ("shipped_bf16", False, True),
                                ("no_dropout_bf16", False, True)):
        if (variant == "xla" and not args.xla) or ("bf16" in variant and not args.bf16):
            continue
        m = build("no_dropout" if variant == "no_dropout_bf16" else
                  variant if variant in ("keras_dropout", "no_dropout", "bf16") else "shipped")
        out[variant] = rate(step_fn(m, jit, fused, bf16=variant in ("shipped_bf16", "no_dropout_bf16")), args.seconds)
    sal = make_gradient_saliency(build("shipped"))
    out["saliency"] = rate(lambda: sal(one_hot(g)), args.seconds)
    # one dropout mask of a convolution's output (a step draws two of that size), and its random words alone
    drop = hm.FastDropout(cfg.dropout, seed=1)
    y = tf.zeros([args.batch, args.snps, cfg.filters], tf.bfloat16)
    drop.build(y.shape)
    n_words = (args.batch * args.snps * cfg.filters + 3) // 4
    seed = tf.constant([1, 0], tf.int64)
    # each returns one element, so that the timing loop's sum adds no pass over the mask
    ms = {"dropout_mask": args.batch / rate(tf.function(lambda: drop.keep_mask(y, cfg.dropout)[0, 0, 0]), 2.0) * 1e3,
          "its_random_words": args.batch / rate(tf.function(lambda: tf.random.stateless_uniform(
              [n_words], seed=seed, minval=None, maxval=None, dtype=tf.int32)[0]), 2.0) * 1e3}
    return {"samples_per_s": out, "ms": ms,
            "flops": {k: fl[k] for k in ("train_step", "train_step_fused", "saliency")}}


def profile(args) -> None:
    """TensorFlow's profiler on the shipped step (bfloat16 with --bf16): milliseconds per step of
    each operation of the compiled graph, the largest first."""
    import collections
    import glob
    import tempfile

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np

    from hpcsnp.resources import configure_tensorflow

    configure_tensorflow(args.threads)
    import keras
    import tensorflow as tf
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    import hpcsnp.cnn.fused as hf
    import hpcsnp.cnn.model as hm
    from hpcsnp.cnn.data import one_hot
    from hpcsnp.config import Config

    cfg = Config(batch_size=args.batch, filters=args.filters, bf16_step=args.bf16)
    rng = np.random.default_rng(0)
    g = tf.constant(rng.integers(-1, 3, (args.batch, args.snps)).astype(np.int8))
    t = tf.constant(rng.standard_normal(args.batch).astype(np.float32))
    model = hm.build_model(args.snps, cfg, missing_dosage=rng.uniform(-1, 1, args.snps).astype(np.float32))
    opt = keras.optimizers.Adam(cfg.learning_rate)
    opt.build(model.trainable_variables)
    fused = hf.TrainingForward(model, cfg)
    # (a tree from before the step read int8 codes: through its one-hot call)
    forward = hf.on_codes(fused) if hasattr(hf, "on_codes") else lambda c, tr: fused(one_hot(c), training=tr)

    @tf.function
    def step(g, t):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(forward(g, True)[:, 0] - t)) + tf.add_n(model.losses)
        opt.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
        return loss

    for _ in range(5):
        float(step(g, t))
    n = 20
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        for _ in range(n):
            float(step(g, t))
        tf.profiler.experimental.stop()
        space = xplane_pb2.XSpace()
        space.ParseFromString(open(sorted(glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True))[-1], "rb").read())
    ms = collections.Counter()
    for plane in space.planes:
        names = {k: m.name for k, m in plane.event_metadata.items()}
        for line in plane.lines:
            if line.name.startswith("tf_Compute"):  # the executor's threads: one event per operation run
                for ev in line.events:
                    ms[names.get(ev.metadata_id, "?")] += ev.duration_ps / 1e9 / n
    ms.pop("ExecutorState::Process", None)
    print(f"the shipped step ({'bfloat16' if args.bf16 else 'float32'}), batch {args.batch}, {args.snps} SNPs, "
          f"{args.threads} thread(s), under the profiler: {sum(ms.values()):.1f} ms of operations a step")
    for name, v in ms.most_common(args.profile):
        print(f"  {v:7.2f} ms  {name}")


def kernel_lengths(args) -> None:
    """Milliseconds of one convolution of the coordinates, forward and weight gradient, per kernel length."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from hpcsnp.resources import configure_tensorflow

    configure_tensorflow(args.threads)
    import tensorflow as tf

    from hpcsnp.cnn.fused import FILTER_GRAD_TAPS

    print(f"one convolution, batch {args.batch}, {args.snps} SNPs, 4 coordinates -> {args.filters} filters, "
          f"{args.threads} thread(s); forward + weight gradient, the gradient in one oneDNN call or in pieces "
          f"of at most {FILTER_GRAD_TAPS} taps (hpcsnp.cnn.fused._conv_valid, as the step computes it)")
    for dtype in (tf.bfloat16, tf.float32):
        for k in (int(v) for v in args.kernel_lengths.split(",")):
            one, pieces = _kernel_ms(args, k, dtype)
            print(f"  {dtype.name:8s} {k:3d} taps: {one:6.2f} ms in one call, {pieces:6.2f} ms in pieces")


def _kernel_ms(args, k: int, dtype) -> tuple[float, float]:
    import numpy as np
    import tensorflow as tf

    from hpcsnp.cnn.fused import _conv_valid

    rng = np.random.default_rng(0)
    x = tf.constant(rng.standard_normal((args.batch, args.snps + k - 1, 4)), dtype)
    w = tf.constant(rng.standard_normal((k, 4, args.filters)), dtype)
    dy = tf.constant(rng.standard_normal((args.batch, args.snps, args.filters)), dtype)

    @tf.function
    def one_call():
        return tf.nn.conv1d(x, w, 1, "VALID"), tf.raw_ops.Conv2DBackpropFilter(
            input=x[:, None], filter_sizes=[1, k, 4, args.filters], out_backprop=dy[:, None], strides=[1, 1, 1, 1],
            padding="VALID")

    @tf.function
    def in_pieces():
        with tf.GradientTape() as tape:
            tape.watch(w)
            y = _conv_valid(x, w)
        return y, tape.gradient(y, w, output_gradients=dy)

    def ms(f):
        f()
        t0, n = time.perf_counter(), 0
        while time.perf_counter() - t0 < args.seconds / 4:
            f()
            n += 1
        return (time.perf_counter() - t0) / n * 1e3
    return ms(one_call), ms(in_pieces)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--snps", type=int, default=4236)
    ap.add_argument("--filters", type=int, default=10,
                    help="filters per convolution [10, the default model]; 20 is a bound on two models in one step")
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--xla", action="store_true", help="also time jit_compile=True (slow to compile here)")
    ap.add_argument("--bf16", action="store_true",
                    help="also time the unfused Keras layers under the mixed_bfloat16 policy")
    ap.add_argument("--pair", action="store_true", help="two 1-thread copies at once; print their sum")
    ap.add_argument("--profile", type=int, metavar="N", default=0,
                    help="instead: the N costliest operations of the shipped step, from TensorFlow's profiler")
    ap.add_argument("--kernel-lengths", metavar="K,K,...",
                    help="instead: the first convolution's forward and weight gradient at these kernel lengths")
    ap.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.kernel_lengths:
        kernel_lengths(a)
        return
    if a.profile:
        profile(a)
        return
    if a.json:
        print(json.dumps(measure(a)))
        return
    if a.pair:
        cmd = [sys.executable, __file__, "--json", "--threads", "1", "--batch", str(a.batch), "--snps", str(a.snps),
               "--filters", str(a.filters), "--seconds", str(a.seconds)] + (["--xla"] if a.xla else []) \
            + (["--bf16"] if a.bf16 else [])
        procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(2)]
        res = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
        sps = {k: sum(r["samples_per_s"][k] for r in res) for k in res[0]["samples_per_s"]}
        ms = {k: sum(r["ms"][k] for r in res) / 2 for k in res[0]["ms"]}  # each process's, averaged
        res = {"samples_per_s": sps, "ms": ms, "flops": res[0]["flops"]}
        how = "2 processes x 1 thread, summed"
    else:
        res = measure(a)
        how = f"1 process x {a.threads} thread(s)"
    fl = res["flops"]
    print(f"batch {a.batch}, {a.snps} SNPs, {a.filters} filters, {how}; "
          f"FLOPs/sample: training step {fl['train_step'] / 1e6:.1f} M "
          f"({fl['train_step_fused'] / 1e6:.1f} M fused), saliency {fl['saliency'] / 1e6:.1f} M")
    for k, v in res["samples_per_s"].items():
        per = fl["saliency"] if k == "saliency" else fl["train_step"] if k in ("unfused", "keras_dropout", "bf16") \
            else fl["train_step_fused"]
        equiv = "" if k == "saliency" else f"  ({v * fl['train_step'] / 1e9:6.1f} GFLOP/s equiv.)"
        print(f"  {k:14s} {v:8.0f} samples/s  {v * per / 1e9:6.1f} GFLOP/s{equiv}")
    print(f"  one dropout mask of a bfloat16 [{a.batch}, {a.snps}, {a.filters}] activation (a step draws two): "
          f"{res['ms']['dropout_mask']:.2f} ms, of which its random words {res['ms']['its_random_words']:.2f} ms "
          f"({1 if a.pair else a.threads} thread(s))")


if __name__ == "__main__":
    main()
