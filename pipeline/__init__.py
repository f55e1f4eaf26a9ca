"""style-pipeline: batch neural style transfer (Gatys et al., CVPR 2016)."""

__version__ = "0.1.0"

from .api import StyleJob, StyleResult, stylize, stylize_batch
from .params import StyleParams
from .runtime import Runtime

__all__ = ["Runtime", "StyleJob", "StyleParams", "StyleResult", "__version__", "stylize",
           "stylize_batch"]
