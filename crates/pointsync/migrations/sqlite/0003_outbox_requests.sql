-- The outbox stores the whole validated request (method, path and body) at enqueue time and the
-- dispatcher sends it byte for byte. Rows written before this version are points syncs.
ALTER TABLE outbox ADD COLUMN method TEXT NOT NULL DEFAULT 'POST';
ALTER TABLE outbox ADD COLUMN path TEXT NOT NULL DEFAULT '/v3/businesscircle/points/notify';
