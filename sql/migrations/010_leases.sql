-- Who is working on what: a run being answered (infer:<run_id>) or a judge judging a run
-- (judge:<judge_id>:<run_id>) is held by one process at a time, so two sessions never answer or pay
-- for the same questions. A row is taken in a transaction; its holder refreshes heartbeat_at while it
-- works and deletes the row when done. A holder that died (its PID gone on this host, or no
-- heartbeat for a while from another host) is taken over (warehouse/leases.py).
CREATE TABLE leases (
    resource      VARCHAR PRIMARY KEY,
    holder        VARCHAR NOT NULL,           -- one token per process
    pid           INTEGER NOT NULL,
    host          VARCHAR NOT NULL,
    started       VARCHAR,                    -- the PID's start time (/proc), so a reused PID is not mistaken
    command       VARCHAR,
    taken_at      TIMESTAMP NOT NULL DEFAULT current_timestamp,
    heartbeat_at  TIMESTAMP NOT NULL DEFAULT current_timestamp
);
