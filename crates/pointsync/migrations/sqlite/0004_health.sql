-- One row the readiness probe writes (and commits) to prove the database takes writes now.
CREATE TABLE health (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    probed_at  INTEGER NOT NULL
);
INSERT INTO health (id, probed_at) VALUES (1, 0);
