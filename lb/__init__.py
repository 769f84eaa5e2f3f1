"""tfserving-lb: the proxy. Never imports TensorFlow (only backends/ may)."""

from lb.native import activate

__version__ = "0.1.0"
activate(__name__, __path__)    # the compiled data path, when installed for these sources
