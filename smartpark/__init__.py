"""smartpark: a residential community's car park service (智慧社区停车场服务).

The public API for plugin authors is small: :data:`hookimpl` to mark hook
implementations, the port Protocols in :mod:`smartpark.ports`, and the fakes and
contract tests in :mod:`smartpark.testing`.
"""

from .ports.hookspecs import hookimpl

__version__ = "0.1.0"

__all__ = ["hookimpl", "__version__"]
