-- Summary tables: the per-run metric views materialised by warehouse/summaries.py (the tables
-- themselves are created there, shaped like the definitions in sql/views). `state` records the
-- fingerprint of the data they were computed from; the public views refuse to answer when the
-- data has changed since, so a reader never gets stale numbers silently.
CREATE SCHEMA summaries;

CREATE TABLE summaries.state (
    id               INTEGER PRIMARY KEY CHECK (id = 1),
    data_fingerprint UBIGINT,                  -- definitions.data_fingerprint when last refreshed
    context_fingerprint UBIGINT,               -- definitions.context_fingerprint, idem
    definitions_sha  VARCHAR,                  -- sha256 of sql/views/*.sql the summaries came from
    refreshed_at     TIMESTAMP
);
INSERT INTO summaries.state VALUES (1, NULL, NULL, NULL, NULL);

CREATE TABLE summaries.run_state (
    run_id       VARCHAR PRIMARY KEY,
    fingerprint  UBIGINT NOT NULL              -- definitions.run_fingerprints when last refreshed
);
