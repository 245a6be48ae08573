"""Real database errors on demand: a trigger raises SQLSTATE 57P01 (admin_shutdown, an `OperationalError`).

`install` once per database, `inject` per fault, `uninstall` at the end. A fault names a table, the
row (`chunks` by document id, `documents` by id), optionally the state the row is written with, and
how many writes fail; the count lives in a sequence, so the failing transaction's rollback does not
reset it.
"""

from __future__ import annotations

import itertools

from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

_seqs = itertools.count()

INSTALL = """
CREATE TABLE IF NOT EXISTS test_faults (tbl text, row_id bigint, state text, times int, seq text);
CREATE OR REPLACE FUNCTION test_fault() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
  IF EXISTS (SELECT 1 FROM test_faults f WHERE CASE  -- only a matching row counts against the fault's times
      WHEN f.tbl = TG_TABLE_NAME AND f.row_id = (to_jsonb(NEW) ->> TG_ARGV[0])::bigint
        AND (f.state IS NULL OR f.state = to_jsonb(NEW) ->> 'state') THEN nextval(f.seq) <= f.times
      ELSE false END) THEN
    RAISE EXCEPTION 'injected fault on %', TG_TABLE_NAME USING ERRCODE = 'admin_shutdown';
  END IF;
  RETURN NEW;
END $$;
CREATE OR REPLACE TRIGGER test_fault BEFORE INSERT ON chunks FOR EACH ROW EXECUTE FUNCTION test_fault('document_id');
CREATE OR REPLACE TRIGGER test_fault BEFORE UPDATE ON documents FOR EACH ROW EXECUTE FUNCTION test_fault('id');
"""

UNINSTALL = """
DROP TRIGGER IF EXISTS test_fault ON chunks;
DROP TRIGGER IF EXISTS test_fault ON documents;
DROP FUNCTION IF EXISTS test_fault();
DROP TABLE IF EXISTS test_faults;
"""


def install(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        s.execute(text(INSTALL))


def uninstall(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        s.execute(text(UNINSTALL))


def inject(sessions: sessionmaker[Session], table: str, row_id: int, times: int, state: str | None = None) -> None:
    """The next `times` writes of that row (with that `state`) raise admin_shutdown."""
    seq = f"test_fault_{next(_seqs)}_{row_id}"
    with sessions.begin() as s:
        s.execute(text(f"CREATE SEQUENCE {seq}"))  # a name made here, not input
        s.execute(
            text("INSERT INTO test_faults VALUES (:t, :r, :s, :n, :q)"),
            {"t": table, "r": row_id, "s": state, "n": times, "q": seq},
        )
