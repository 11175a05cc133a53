"""The hybrid router: score a query's complexity, pick a backend (cheap local ONNX model or a paid
OpenAI-compatible API), run it with fallback, and account for what it cost.

`config` reads router.toml, `scoring` classifies a query, `decide` turns a classification into a
decision; execution and cost accounting build on these.
"""
