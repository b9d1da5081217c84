-- Every callback accepted (or rejected as business-invalid), deduplicated on its natural key.
-- Payments: (MALL_TRANSACTION.SUCCESS, transaction_id, ''); refunds: (MALL_REFUND.SUCCESS,
-- transaction_id, refund_id); authorizations: (MALL_AUTH.ACTIVATE_CARD, openid, code:auth_type);
-- other events: (event_type, notification id, '').
CREATE TABLE inbox (
    id              INTEGER PRIMARY KEY,
    event_type      TEXT    NOT NULL,
    transaction_id  TEXT    NOT NULL,
    refund_id       TEXT    NOT NULL,
    notification_id TEXT    NOT NULL,
    deliveries      INTEGER NOT NULL DEFAULT 1,
    openid          TEXT    NOT NULL,
    resource        TEXT    NOT NULL,
    status          TEXT    NOT NULL CHECK (status IN ('applied', 'held', 'rejected', 'ignored')),
    note            TEXT    NOT NULL DEFAULT '',
    received_at     INTEGER NOT NULL,
    UNIQUE (event_type, transaction_id, refund_id)
);
CREATE INDEX inbox_held ON inbox (transaction_id) WHERE status = 'held';

CREATE TABLE members (
    openid      TEXT    PRIMARY KEY,
    authorized  INTEGER,          -- 1 authorized, 0 not, NULL never reported
    auth_type   TEXT    NOT NULL,
    code        TEXT    NOT NULL,
    balance     INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);

CREATE TABLE payments (
    transaction_id   TEXT    PRIMARY KEY,
    openid           TEXT    NOT NULL,
    appid            TEXT    NOT NULL,
    mchid            TEXT    NOT NULL,
    shop_number      TEXT    NOT NULL,
    amount           INTEGER NOT NULL,
    credited_points  INTEGER NOT NULL,
    refunded_amount  INTEGER NOT NULL DEFAULT 0,
    entitled_debit   INTEGER NOT NULL DEFAULT 0,
    created_at       INTEGER NOT NULL
);

-- Credits (refund_id = '') and debits, at most one per natural key.
CREATE TABLE ledger (
    id              INTEGER PRIMARY KEY,
    openid          TEXT    NOT NULL,
    kind            TEXT    NOT NULL CHECK (kind IN ('credit', 'debit')),
    transaction_id  TEXT    NOT NULL,
    refund_id       TEXT    NOT NULL,
    points          INTEGER NOT NULL,
    balance_after   INTEGER NOT NULL,
    day             INTEGER NOT NULL,
    rule            TEXT    NOT NULL,
    created_at      INTEGER NOT NULL,
    UNIQUE (kind, transaction_id, refund_id)
);
CREATE INDEX ledger_member ON ledger (openid, day);

-- One points sync per transaction; the payload is stored at enqueue time and sent byte for byte.
CREATE TABLE outbox (
    id              INTEGER PRIMARY KEY,
    transaction_id  TEXT    NOT NULL UNIQUE,
    payload         TEXT    NOT NULL,
    state           TEXT    NOT NULL CHECK (state IN ('pending', 'inflight', 'done', 'parked', 'dead')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    due_at          INTEGER NOT NULL,
    lease_owner     TEXT,
    lease_until     INTEGER,
    last_error      TEXT,
    created_at      INTEGER NOT NULL,
    done_at         INTEGER
);
CREATE INDEX outbox_due ON outbox (state, due_at);
