"""``lbnl serve``: a rerank HTTP server in the Jina/Cohere API shape, with dynamic batching.

Import :func:`lbnl.serve.app.create_app` or :func:`lbnl.serve.run.serve` (they need the ``serve``
extra: FastAPI, uvicorn, prometheus-client); this package itself imports nothing heavy.
"""
