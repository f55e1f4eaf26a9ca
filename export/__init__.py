"""ONNX export of the truncated VGG19 trunk (see onnx_export.py)."""
