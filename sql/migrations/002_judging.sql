-- Judging: panels (which judges form a jury), the verdict cache and the provider call log.

-- A panel is a named jury. The jury of a run under a panel = the panel's judges that judged the
-- run at least once. A judge may sit on several panels; its judgments are stored once.
CREATE TABLE panels (
    panel        VARCHAR PRIMARY KEY,
    description  VARCHAR
);

CREATE TABLE panel_members (
    panel        VARCHAR NOT NULL,
    judge_id     VARCHAR NOT NULL,
    PRIMARY KEY (panel, judge_id)
);

INSERT INTO panels
SELECT 'upstream', 'the three published CT-SpatialVQA judges'
WHERE EXISTS (SELECT 1 FROM judges WHERE judge_id LIKE 'upstream/%');
INSERT INTO panel_members SELECT 'upstream', judge_id FROM judges WHERE judge_id LIKE 'upstream/%';

-- One row per provider call (a batch of items), failed ones included: what was paid for.
CREATE TABLE judge_calls (
    call_id      VARCHAR PRIMARY KEY,
    judge_id     VARCHAR NOT NULL,
    request_hash VARCHAR NOT NULL,             -- sha256 of the exact request sent
    n_items      INTEGER NOT NULL,
    attempts     INTEGER NOT NULL,             -- HTTP attempts, retries included
    status       VARCHAR NOT NULL,             -- 'ok' | 'error' | 'timeout' | 'blocked' | 'unparsed'
    error        VARCHAR,
    tokens_in    INTEGER,
    tokens_out   INTEGER,
    latency_ms   DOUBLE,
    cost_usd     DOUBLE,
    created_at   TIMESTAMP NOT NULL DEFAULT current_timestamp
);

-- Content-addressed verdict cache: item_key = sha256(judge_id, question, reference, prediction).
-- Only real true/false verdicts are cached; a failure is tried again on the next run.
CREATE TABLE judge_cache (
    item_key     VARCHAR PRIMARY KEY,
    judge_id     VARCHAR NOT NULL,
    verdict      BOOLEAN NOT NULL,
    raw_response VARCHAR,
    call_id      VARCHAR,
    created_at   TIMESTAMP NOT NULL DEFAULT current_timestamp
);

ALTER TABLE judgments ADD COLUMN item_key VARCHAR;
ALTER TABLE judgments ADD COLUMN call_id VARCHAR;
