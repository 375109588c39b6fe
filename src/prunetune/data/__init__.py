"""Data sources (registered) and the in-memory dataset they produce."""

from .base import DataBundle, TensorData, batches, build_data

__all__ = ["DataBundle", "TensorData", "batches", "build_data"]
