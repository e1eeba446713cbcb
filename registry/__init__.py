"""The registry: SQL models and data-access functions shared by the api and the worker.

Imports no web or queue code. The schema is made only by the Alembic migrations in
``migrations/``.
"""
