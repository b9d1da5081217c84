-- The outgoing rate limit shared by every instance (WeChat limits the merchant, not the machine):
-- a token bucket refilled at dispatcher.qps on the database's clock, taken from inside each claim.
CREATE TABLE rate_limit (
    name    TEXT             PRIMARY KEY,
    tokens  DOUBLE PRECISION NOT NULL,
    at_ms   BIGINT           NOT NULL
);
INSERT INTO rate_limit (name, tokens, at_ms) VALUES ('wechat', 0, 0);
