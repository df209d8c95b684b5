"""hpcsnp: genomic prediction with a residual CNN, gradient saliency and
out-of-core cross-validation on HPC clusters.

The package is importable without TensorFlow: only ``model``, ``train``,
``data`` and ``saliency`` import it, and only when they are used.
"""

import logging

__version__ = "0.1.0"

# Progress and warnings go through the "hpcsnp" loggers; the CLI sets up one handler on
# stderr (INFO, or DEBUG with -v).  Used as a library, nothing is printed unless asked.
logging.getLogger("hpcsnp").addHandler(logging.NullHandler())
