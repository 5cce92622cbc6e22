"""overtrain: measure catastrophic overtraining (Springer et al., 2025) from a laptop to a cluster."""

from overtrain.errors import OvertrainError

__version__ = "0.1.0"
__all__ = ["OvertrainError", "__version__"]
