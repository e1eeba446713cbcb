"""The front door: the ``clipfit`` command and the process wiring of the service.

``clipfit_core`` is the method as a library; ``registry``, ``api`` and ``worker`` are the
service's parts. This package reads the configuration once (``registry.settings.Settings``)
and hands it to each part: it is the only place that starts servers or workers.
"""

from clipfit_core.version import __version__ as __version__
