"""Model factories (registered) and `build_model`."""

from .factory import build_model, classifier_name

__all__ = ["build_model", "classifier_name"]
