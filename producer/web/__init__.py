"""The web process (`onnxq api`): HTTP ingress for upstream systems, on the producer's own code.

`app.create_app` builds the ASGI application from one router per concern: jobs, the seed's
synchronous endpoint, models and health, metrics. HTTP status codes are chosen in `errors` and
only there.
"""
