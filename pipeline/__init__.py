"""docpipe: documents in, pgvector search out.

The library half of docpipe: parse, chunk, embed, store and search are plain
functions and classes here; the Celery half lives in ``docpipe.workers``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__all__ = ["Client", "Hit", "Job", "Settings"]
__version__ = "0.1.0"

if TYPE_CHECKING:
    from docpipe.client import Client, Hit, Job
    from docpipe.config import Settings


def __getattr__(name: str):  # lazy: keep `import docpipe` and the CLI fast
    if name in ("Client", "Hit", "Job"):
        from docpipe import client

        return getattr(client, name)
    if name == "Settings":
        from docpipe.config import Settings

        return Settings
    raise AttributeError(name)
