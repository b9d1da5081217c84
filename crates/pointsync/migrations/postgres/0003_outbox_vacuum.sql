-- The outbox is a queue: a sync's row changes state twice (pending → inflight → done), and each
-- change leaves a dead row version, with dead entries in the state index, until a vacuum. By
-- default autovacuum waits until a fifth of the table is dead: on an outbox of millions of
-- payments, hundreds of thousands of dead entries that every claim walks past on its way to the
-- first due row. Vacuumed after a fixed number of changes instead, however large it grows.
-- Storage parameters only: no rewrite, and the lock taken does not block reads or writes.
-- A DBA may tune them further with ALTER TABLE outbox SET (…).
ALTER TABLE outbox SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 10000);
