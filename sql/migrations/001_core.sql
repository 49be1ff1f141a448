-- Core warehouse schema. Applied once, inside one transaction, by warehouse/migrate.py.
-- Keys are natural where the domain has them (qid, run name, judge name) so analysts can join
-- without surrogate look-ups; no FOREIGN KEY clauses because DuckDB forbids updating or deleting
-- referenced rows, which idempotent re-loads need. Referential checks live in tests/contracts.

CREATE TABLE datasets (
    dataset_id   VARCHAR PRIMARY KEY,          -- e.g. 'ct-spatialvqa', 'phantom-s7'
    source       VARCHAR NOT NULL,             -- 'upstream-layout', ...
    source_path  VARCHAR,
    synthetic    BOOLEAN NOT NULL DEFAULT false,
    description  VARCHAR,
    loaded_at    TIMESTAMP NOT NULL DEFAULT current_timestamp
);

CREATE TABLE volumes (
    dataset_id   VARCHAR NOT NULL,
    volume       VARCHAR NOT NULL,             -- file name, e.g. 'valid_1000_a_1.nii.gz'
    position     INTEGER NOT NULL,             -- order in the dataset file
    PRIMARY KEY (dataset_id, volume)
);

CREATE TABLE questions (
    dataset_id   VARCHAR NOT NULL,
    qid          VARCHAR NOT NULL,             -- '<volume>::<index>'
    volume       VARCHAR NOT NULL,
    idx          INTEGER NOT NULL,             -- index in the volume's qa_pairs
    question     VARCHAR NOT NULL,
    answer       VARCHAR NOT NULL,
    PRIMARY KEY (dataset_id, qid),
    CHECK (qid = volume || '::' || idx)
);

CREATE TABLE categories (
    category     VARCHAR PRIMARY KEY,
    description  VARCHAR
);
INSERT INTO categories VALUES
    ('Laterality & Bilateral Symmetry', 'left/right side, bilateral or symmetric findings'),
    ('Longitudinal (Vertical) Position', 'upper/lower, cranio-caudal level'),
    ('Anterior-Posterior (Depth) Relations', 'anterior/posterior, dependent position'),
    ('Medial-Lateral Orientation (Centricity)', 'central/peripheral, medial/lateral'),
    ('Adjacency & Containment', 'what touches or contains what'),
    ('Spatial Extent & Boundaries', 'size, extent and margins');

CREATE TABLE question_categories (
    dataset_id   VARCHAR NOT NULL,
    qid          VARCHAR NOT NULL,
    category     VARCHAR NOT NULL,
    PRIMARY KEY (dataset_id, qid, category),
    CHECK (category IN (
        'Laterality & Bilateral Symmetry', 'Longitudinal (Vertical) Position',
        'Anterior-Posterior (Depth) Relations', 'Medial-Lateral Orientation (Centricity)',
        'Adjacency & Containment', 'Spatial Extent & Boundaries'))
);

CREATE TABLE models (
    model_id     VARCHAR PRIMARY KEY,          -- e.g. 'm3d'
    family       VARCHAR,
    checkpoint   VARCHAR,
    description  VARCHAR
);

-- A run is one model configuration on one dataset; `name` is what the views call `model`.
CREATE TABLE runs (
    run_id       VARCHAR PRIMARY KEY,
    dataset_id   VARCHAR NOT NULL,
    name         VARCHAR NOT NULL,
    model_id     VARCHAR NOT NULL,
    source       VARCHAR NOT NULL,             -- 'upstream-import', 'inference', ...
    config       JSON,
    created_at   TIMESTAMP NOT NULL DEFAULT current_timestamp,
    UNIQUE (dataset_id, name)
);

CREATE TABLE predictions (
    run_id       VARCHAR NOT NULL,
    qid          VARCHAR NOT NULL,
    text         VARCHAR,                      -- exactly what the model returned (not cleaned)
    status       VARCHAR NOT NULL,             -- 'ok' | 'error' | 'timeout' | 'blocked'
    reason       VARCHAR,
    provenance   JSON,                         -- source file and line, seeds, timings
    created_at   TIMESTAMP NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (run_id, qid),
    CHECK (status IN ('ok', 'error', 'timeout', 'blocked')),
    CHECK ((status = 'ok') = (text IS NOT NULL))
);

-- A judge is provider + model + prompt version + decoding settings; `name` is what the views show.
CREATE TABLE judges (
    judge_id       VARCHAR PRIMARY KEY,
    name           VARCHAR NOT NULL UNIQUE,
    provider       VARCHAR NOT NULL,
    model          VARCHAR NOT NULL,
    prompt_version VARCHAR NOT NULL,
    settings       JSON,
    notes          VARCHAR
);

-- One row per (prediction, judge). verdict is set only for a real true/false answer (status 'ok');
-- every failure keeps its status and reason and never counts as a vote.
CREATE TABLE judgments (
    run_id       VARCHAR NOT NULL,
    qid          VARCHAR NOT NULL,
    judge_id     VARCHAR NOT NULL,
    verdict      BOOLEAN,
    status       VARCHAR NOT NULL,             -- 'ok' | 'no_verdict' | 'unparsed' | 'error' | 'timeout' | 'blocked'
    reason       VARCHAR,
    raw_response VARCHAR,
    tokens_in    INTEGER,
    tokens_out   INTEGER,
    latency_ms   DOUBLE,
    cost_usd     DOUBLE,
    source       VARCHAR NOT NULL,             -- 'upstream-import' or the judging flow run
    created_at   TIMESTAMP NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (run_id, qid, judge_id),
    CHECK (status IN ('ok', 'no_verdict', 'unparsed', 'error', 'timeout', 'blocked')),
    CHECK ((status = 'ok') = (verdict IS NOT NULL))
);
