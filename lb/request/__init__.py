"""The request core, protocol-neutral: a call, its cache plan, the scheduler's queue
and slots, retries, hedges, batches."""

from lb.native import activate

activate(__name__, __path__)    # see lb.native
