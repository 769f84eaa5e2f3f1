"""The lean HTTP/1.1 data path: asyncio protocols on uvloop with httptools (llhttp).

`lb.http.server`: the client-facing protocol of the REST front.
`lb.http.client`: keep-alive connection pools to the nodes.
"""

from lb.native import activate

activate(__name__, __path__)    # see lb.native
