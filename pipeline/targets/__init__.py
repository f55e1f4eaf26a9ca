"""Content and style targets: the ONNX export, ONNX Runtime sessions, builder and cache."""
