"""The producer side: the Python client, and the CLI verbs that put jobs in and read them out."""

from producer.client import SubmitOutcome, get_job, submit_inference, wait_for_jobs
from producer.http_client import ClientError, OnnxqClient

__all__ = ["ClientError", "OnnxqClient", "SubmitOutcome", "get_job", "submit_inference", "wait_for_jobs"]
