"""`python -m onnxq` runs the CLI (how `onnxq up` starts its children)."""

from onnxq.cli import app

app(prog_name="onnxq")
