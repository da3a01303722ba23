"""Batch reranking of large files (``lbnl rerank-batch``), with a local and a Ray engine.

Importing this package stays light; see :mod:`lbnl.batch.job` for the library entry point
:func:`~lbnl.batch.job.run_batch`, and ``docs/batch.md`` for usage.
"""
