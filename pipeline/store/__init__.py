"""Database operations of the pipeline, one module per table group. The caller owns the session and transaction.

Every write here is idempotent under redelivery: claims are leases, inserts
conflict on unique keys, and a state only moves forward from the state the
caller claimed.
"""

from docpipe.states import FINAL
from docpipe.store.collections import *  # noqa: F403
from docpipe.store.documents import *  # noqa: F403
from docpipe.store.embeddings import *  # noqa: F403
from docpipe.store.lifecycle import *  # noqa: F403
from docpipe.store.parts import *  # noqa: F403
from docpipe.store.rechunk import *  # noqa: F403
from docpipe.store.reindex import *  # noqa: F403
from docpipe.store.terms import *  # noqa: F403

FINAL_STATES = FINAL  # document states no worker moves on from
