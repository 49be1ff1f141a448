-- Inference sessions: one row per invocation of the runner on a run (a resumed run has several).
-- The run's identity lives in runs.config; what may differ between sessions without changing an
-- answer (device, dtype, package versions, the flow run) is kept here, and each prediction's
-- provenance names the session that produced it.
CREATE TABLE inference_sessions (
    session_id   VARCHAR PRIMARY KEY,
    run_id       VARCHAR NOT NULL,
    flow_run_id  VARCHAR,
    provenance   JSON,                         -- ModelAdapter.provenance()
    started_at   TIMESTAMP NOT NULL DEFAULT current_timestamp,
    finished_at  TIMESTAMP,
    pending      INTEGER,                      -- questions this session set out to answer
    ok           INTEGER,
    error        INTEGER,
    seconds      DOUBLE
);
