"""Compression: ONNX export, quantization, pruning, distillation, parity and accuracy gates."""

from lakeloop.compression.compress import CompressionReport, compress
from lakeloop.compression.export import export_onnx, feature_columns, onnx_inputs

__all__ = ["CompressionReport", "compress", "export_onnx", "feature_columns", "onnx_inputs"]
