"""BM25 term statistics: the upkeep the chunk triggers leave to a periodic caller."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.orm import Session

__all__ = ["compact_term_df"]


def compact_term_df(session: Session) -> int:
    """Fold each term's document-frequency deltas into one row; returns the delta rows folded.

    Every chunk write adds one delta row per (collection, lexeme), so a term's df
    is a sum that grows with the documents written; folding keeps it one row.
    Readers see the old rows or the folded one, never both; concurrent writers
    are not blocked (their rows are not yet visible and stay as they are).
    """
    return int(session.execute(text("SELECT docpipe_compact_term_df()")).scalar_one())
