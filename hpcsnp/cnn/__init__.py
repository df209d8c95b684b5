"""The residual CNN and everything that runs it: the tf.data input (`data`), the layers
(`model`), the fused training forward (`fused`), the per-fold training (`train`: one fold's
models, refit and outputs; `loop`: epochs, early stopping, plateau; `steps`: the compiled
step, prediction and attribution functions; `checkpoint`: state saved every epoch) and the
attributions computed from its models (`attribution/`, one module per method).  The only sub-package that imports
TensorFlow; the rest of hpcsnp reaches it through functions that import it when they run."""
