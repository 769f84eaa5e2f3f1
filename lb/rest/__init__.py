"""The REST front and the REST side of the nodes: HTTP routes, keys, batching, row caching."""

from lb.native import activate

activate(__name__, __path__)    # see lb.native
