"""The use cases: jobs, datasets, adapters (import, delete, versions, aliases), classify and
webhooks, between the front ends (``api/``, ``worker/``, the ``clipfit`` command) and the
library and persistence below (``clipfit_core/``, ``registry/``).

A use case takes plain values and core types, owns its transaction, applies the quotas and
the queue contract, and raises ``service.errors`` (problems, not found, conflict, over
quota, unavailable); it knows nothing of HTTP.
"""
