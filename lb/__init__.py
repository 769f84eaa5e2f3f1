"""tfserving-lb: the proxy. Never imports TensorFlow (only backends/ may)."""

__version__ = "0.1.0"
