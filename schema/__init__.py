"""SQL tables, the engine, the audit chain and the Alembic migrations of onnxq."""
