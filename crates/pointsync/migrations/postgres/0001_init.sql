-- The whole schema of SQLite's versions 1–5 in PostgreSQL's dialect: the same tables, keys and
-- unique constraints (exactly-once rests on them, not on isolation), times as Unix milliseconds.
CREATE TABLE inbox (
    id              BIGSERIAL PRIMARY KEY,
    event_type      TEXT    NOT NULL,
    transaction_id  TEXT    NOT NULL,
    refund_id       TEXT    NOT NULL,
    notification_id TEXT    NOT NULL,
    deliveries      BIGINT  NOT NULL DEFAULT 1,
    openid          TEXT    NOT NULL,
    resource        TEXT    NOT NULL,
    status          TEXT    NOT NULL CHECK (status IN ('applied', 'held', 'rejected', 'ignored')),
    note            TEXT    NOT NULL DEFAULT '',
    received_at     BIGINT  NOT NULL,
    UNIQUE (event_type, transaction_id, refund_id)
);
CREATE INDEX inbox_held ON inbox (transaction_id) WHERE status = 'held';

CREATE TABLE members (
    openid          TEXT    PRIMARY KEY,
    authorized      BIGINT,
    auth_type       TEXT    NOT NULL,
    code            TEXT    NOT NULL,
    balance         BIGINT  NOT NULL,
    updated_at      BIGINT  NOT NULL,
    auth_state      TEXT    NOT NULL DEFAULT '',
    auth_source     TEXT    NOT NULL DEFAULT '',
    auth_learned_at BIGINT
);

CREATE TABLE payments (
    transaction_id   TEXT    PRIMARY KEY,
    openid           TEXT    NOT NULL,
    appid            TEXT    NOT NULL,
    mchid            TEXT    NOT NULL,
    shop_number      TEXT    NOT NULL,
    amount           BIGINT  NOT NULL,
    credited_points  BIGINT  NOT NULL,
    refunded_amount  BIGINT  NOT NULL DEFAULT 0,
    entitled_debit   BIGINT  NOT NULL DEFAULT 0,
    not_credited     BIGINT  NOT NULL DEFAULT 0,
    created_at       BIGINT  NOT NULL
);
CREATE INDEX payments_member ON payments (openid, created_at);
CREATE INDEX payments_not_credited ON payments (openid) WHERE not_credited = 1;

CREATE TABLE ledger (
    id              BIGSERIAL PRIMARY KEY,
    openid          TEXT    NOT NULL,
    kind            TEXT    NOT NULL CHECK (kind IN ('credit', 'debit', 'adjust')),
    transaction_id  TEXT    NOT NULL,
    refund_id       TEXT    NOT NULL,
    points          BIGINT  NOT NULL,
    balance_after   BIGINT  NOT NULL,
    day             BIGINT  NOT NULL,
    rule            TEXT    NOT NULL,
    created_at      BIGINT  NOT NULL,
    UNIQUE (kind, transaction_id, refund_id)
);
CREATE INDEX ledger_member ON ledger (openid, day);
CREATE INDEX ledger_member_id ON ledger (openid, id);

CREATE TABLE outbox (
    id              BIGSERIAL PRIMARY KEY,
    transaction_id  TEXT    NOT NULL UNIQUE,
    method          TEXT    NOT NULL DEFAULT 'POST',
    path            TEXT    NOT NULL DEFAULT '/v3/businesscircle/points/notify',
    payload         TEXT    NOT NULL,
    state           TEXT    NOT NULL CHECK (state IN ('pending', 'inflight', 'done', 'parked', 'dead')),
    attempts        BIGINT  NOT NULL DEFAULT 0,
    due_at          BIGINT  NOT NULL,
    lease_owner     TEXT,
    lease_until     BIGINT,
    last_error      TEXT,
    created_at      BIGINT  NOT NULL,
    done_at         BIGINT
);
CREATE INDEX outbox_due ON outbox (state, due_at);

CREATE TABLE health (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    probed_at  BIGINT  NOT NULL
);
INSERT INTO health (id, probed_at) VALUES (1, 0);

CREATE TABLE parkings (
    id               BIGSERIAL PRIMARY KEY,
    idempotency_key  TEXT    NOT NULL UNIQUE,
    openid           TEXT    NOT NULL,
    plate_number     TEXT    NOT NULL,
    state            TEXT    NOT NULL CHECK (state IN ('IN', 'OUT')),
    time             TEXT    NOT NULL,
    appid            TEXT    NOT NULL,
    brandid          BIGINT  NOT NULL,
    sub_mchid        TEXT,
    created_at       BIGINT  NOT NULL
);
