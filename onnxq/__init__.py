"""onnxq: queue-driven batch workers for ONNX model inference and hybrid AI routing."""

__version__ = "0.1.0"
