"""The export step as a top-level entry: `python -m export [OPTIONS]` is `pipeline export`.
The code lives in pipeline.targets.onnx_export (the targets are its only user)."""

from pipeline.targets.onnx_export import ensure_model, export_onnx

__all__ = ["ensure_model", "export_onnx"]
