-- The mall API: how each member's authorization was learned (WeChat's callback or its query API),
-- payments kept not credited because the member was not authorized (credited later on her manual
-- application), and parking events relayed to WeChat through the outbox.
ALTER TABLE members ADD COLUMN auth_state TEXT NOT NULL DEFAULT '';   -- WeChat's word (AUTHORIZED, DEAUTHORIZED, …, or the callback's auth_type)
ALTER TABLE members ADD COLUMN auth_source TEXT NOT NULL DEFAULT '';  -- 'callback', 'query' or '' (never learned)
ALTER TABLE members ADD COLUMN auth_learned_at INTEGER;
UPDATE members SET auth_state = auth_type, auth_source = 'callback', auth_learned_at = updated_at
 WHERE authorized IS NOT NULL;

ALTER TABLE payments ADD COLUMN not_credited INTEGER NOT NULL DEFAULT 0;
CREATE INDEX payments_member ON payments (openid, created_at);
CREATE INDEX payments_not_credited ON payments (openid) WHERE not_credited = 1;

-- the member API pages a member's ledger newest first
CREATE INDEX ledger_member_id ON ledger (openid, id);

-- One row per parking event, deduplicated on the caller's Idempotency-Key (or on the event's own
-- fields); its request to WeChat is the outbox row 'parking:{id}'.
CREATE TABLE parkings (
    id               INTEGER PRIMARY KEY,
    idempotency_key  TEXT    NOT NULL UNIQUE,
    openid           TEXT    NOT NULL,
    plate_number     TEXT    NOT NULL,
    state            TEXT    NOT NULL CHECK (state IN ('IN', 'OUT')),
    time             TEXT    NOT NULL,
    appid            TEXT    NOT NULL,
    brandid          INTEGER NOT NULL,
    sub_mchid        TEXT,
    created_at       INTEGER NOT NULL
);
