"""The worker side: broker, actors, the micro-batcher, ONNX sessions and preprocessing."""
