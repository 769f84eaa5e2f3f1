"""The nodes: their state, learned τ and concurrency limits, health, outliers, discovery."""

from lb.native import activate

activate(__name__, __path__)    # see lb.native
