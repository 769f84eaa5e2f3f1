"""The operator's side: the admin app, /metrics, the history and the dashboard."""

from lb.native import activate

activate(__name__, __path__)    # see lb.native
