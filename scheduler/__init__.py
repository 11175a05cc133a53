"""The clock: an APScheduler process that only enqueues periodic work (metrics, A/B closing,
sweeps). Built in its own issue; `onnxq up` starts it once it exists."""
