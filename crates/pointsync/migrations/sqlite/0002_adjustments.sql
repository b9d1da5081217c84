-- Operator adjustments (points redeemed or corrected in the mall's own systems) join the ledger:
-- kind 'adjust', keyed by the operator's reference so a repeated command has no new effect.
-- SQLite cannot alter a CHECK constraint, so the table is rebuilt.
CREATE TABLE ledger_new (
    id              INTEGER PRIMARY KEY,
    openid          TEXT    NOT NULL,
    kind            TEXT    NOT NULL CHECK (kind IN ('credit', 'debit', 'adjust')),
    transaction_id  TEXT    NOT NULL,
    refund_id       TEXT    NOT NULL,
    points          INTEGER NOT NULL,
    balance_after   INTEGER NOT NULL,
    day             INTEGER NOT NULL,
    rule            TEXT    NOT NULL,
    created_at      INTEGER NOT NULL,
    UNIQUE (kind, transaction_id, refund_id)
);
INSERT INTO ledger_new SELECT id, openid, kind, transaction_id, refund_id, points, balance_after, day, rule, created_at FROM ledger;
DROP TABLE ledger;
ALTER TABLE ledger_new RENAME TO ledger;
CREATE INDEX ledger_member ON ledger (openid, day);
