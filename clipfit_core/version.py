"""The release number: pyproject.toml, the ``clipfit`` command, the client's User-Agent and
the API (``GET /v1/version``) all read it here."""

__version__ = "0.2.0"
