"""hpcsnp: genomic prediction with a residual CNN, gradient saliency and
out-of-core cross-validation on HPC clusters.

The package is importable without TensorFlow: only ``model``, ``train``,
``data`` and ``saliency`` import it, and only when they are used.
"""

__version__ = "0.1.0"
