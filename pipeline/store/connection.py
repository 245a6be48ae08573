"""The driver connection under a SQLAlchemy session, for COPY."""

from __future__ import annotations

from sqlalchemy.orm import Session


def raw_connection(session: Session):
    """The psycopg connection under the session (binary COPY needs it)."""
    return session.connection().connection.driver_connection
