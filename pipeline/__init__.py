"""style-pipeline: batch neural style transfer (Gatys et al., CVPR 2016)."""

__version__ = "0.1.0"

from .api import StyleJob, StyleResult, stylize, stylize_batch  # noqa: E402
from .params import StyleParams  # noqa: E402
from .runtime import Runtime  # noqa: E402

__all__ = ["Runtime", "StyleJob", "StyleParams", "StyleResult", "__version__", "stylize",
           "stylize_batch"]
