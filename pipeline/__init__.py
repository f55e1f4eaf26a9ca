"""style-pipeline: batch neural style transfer (Gatys et al., CVPR 2016)."""

from .accel.runtime import Runtime, RuntimeOptions
from .api import StyleJob, StyleResult, stylize, stylize_batch
from .gatys.params import StyleParams
from .version import __version__

__all__ = ["Runtime", "RuntimeOptions", "StyleJob", "StyleParams", "StyleResult", "__version__",
           "stylize", "stylize_batch"]
