"""The gRPC front and the gRPC side of the nodes: messages, wire format, batching."""

from lb.native import activate

activate(__name__, __path__)    # see lb.native
