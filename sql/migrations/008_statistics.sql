-- Statistics computed by `ctsvqa score` (tasks/statistics.py), stored so analysts can read them.
-- accuracy_intervals: percentile bootstrap CIs of majority and strict accuracy per run and panel,
-- resampling volumes (a volume's questions are not independent), with the seed and resample count.
CREATE TABLE accuracy_intervals (
    run_id       VARCHAR NOT NULL,
    panel        VARCHAR NOT NULL,
    metric       VARCHAR NOT NULL,             -- 'majority' | 'strict'
    estimate     DOUBLE NOT NULL,
    ci_low       DOUBLE NOT NULL,
    ci_high      DOUBLE NOT NULL,
    level        DOUBLE NOT NULL,
    n_resamples  INTEGER NOT NULL,
    seed         BIGINT NOT NULL,
    n_questions  INTEGER NOT NULL,
    n_volumes    INTEGER NOT NULL,
    computed_at  TIMESTAMP NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (run_id, panel, metric),
    CHECK (metric IN ('majority', 'strict'))
);

-- run_comparisons: exact McNemar tests of majority correctness between two runs of one dataset under
-- one panel, on the questions both answered and both had judged.
CREATE TABLE run_comparisons (
    dataset      VARCHAR NOT NULL,
    panel        VARCHAR NOT NULL,
    run_a        VARCHAR NOT NULL,
    run_b        VARCHAR NOT NULL,
    n_shared     INTEGER NOT NULL,
    both_correct INTEGER NOT NULL,
    only_a       INTEGER NOT NULL,             -- a right, b wrong
    only_b       INTEGER NOT NULL,
    both_wrong   INTEGER NOT NULL,
    p_value      DOUBLE,                       -- two-sided exact binomial on the discordant pairs; NULL if none
    computed_at  TIMESTAMP NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (dataset, panel, run_a, run_b),
    CHECK (run_a < run_b)
);
