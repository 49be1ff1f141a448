-- Text metrics (ctsvqa score). One row per scored prediction and metrics version; `pair_sha256` is the
-- hash of the (reference, prediction) texts scored, so a prediction whose text changed is scored again
-- and the view never counts a score of an old text. `kept` = false where either text is empty after
-- stripping and lower-casing (upstream skips those rows: they are not in `count`).
CREATE TABLE text_scores (
    run_id          VARCHAR NOT NULL,
    qid             VARCHAR NOT NULL,
    metrics_version VARCHAR NOT NULL,
    pair_sha256     VARCHAR NOT NULL,
    kept            BOOLEAN NOT NULL,
    rouge1_f        DOUBLE,
    rouge2_f        DOUBLE,
    rougeL_f        DOUBLE,
    meteor          DOUBLE,
    sbert_cosine    DOUBLE,
    exact_match     BOOLEAN,
    created_at      TIMESTAMP NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (run_id, qid, metrics_version),
    CHECK (kept = (rouge1_f IS NOT NULL))
);

-- Corpus BLEU is a statistic of the whole run, not an average: stored per run, with the hash of the
-- kept pairs it was computed over, so the view shows it only while it still describes those pairs.
CREATE TABLE text_corpus_scores (
    run_id          VARCHAR NOT NULL,
    metrics_version VARCHAR NOT NULL,
    n_pairs         INTEGER NOT NULL,
    pairs_sha256    VARCHAR NOT NULL,
    bleu            DOUBLE,
    created_at      TIMESTAMP NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (run_id, metrics_version)
);
