-- Fingerprints of what the per-run metrics are computed from, so summaries can tell when they are
-- stale (warehouse/summaries.py). Every writer of ours inserts, deletes, or sets created_at = now()
-- on the rows it changes, so the count and the sum of created_at move with any such change; the
-- verdict counts also catch a hand-made UPDATE of a verdict. (Not rowid: a checkpoint that vacuums
-- deleted rows renumbers them.)
CREATE OR REPLACE VIEW summaries.run_fingerprints AS
WITH p AS (
    SELECT run_id, hash(count(*), sum(epoch_us(created_at)), count(*) FILTER (WHERE status = 'ok')) AS fp
    FROM main.predictions GROUP BY run_id
), j AS (
    SELECT run_id, hash(count(*), sum(epoch_us(created_at)), count(verdict), count(*) FILTER (WHERE verdict)) AS fp
    FROM main.judgments GROUP BY run_id
)
SELECT run_id, hash(r.name, r.dataset_id, p.fp, j.fp) AS fingerprint
FROM main.runs AS r
FULL JOIN p USING (run_id)
FULL JOIN j USING (run_id);

-- Everything else the per-run metrics read: a change here means every run must be recomputed.
CREATE OR REPLACE VIEW summaries.context_fingerprint AS
SELECT hash(
    (SELECT (count(*), sum(hash(judge_id, name))) FROM main.judges),
    (SELECT (count(*), sum(hash(panel, judge_id))) FROM main.panel_members),
    (SELECT (count(*), sum(hash(dataset_id, qid))) FROM main.questions),
    (SELECT (count(*), sum(hash(dataset_id, qid, category))) FROM main.question_categories)
) AS fingerprint;

-- One number for the whole warehouse, cheap enough to compute on every read of a summary.
CREATE OR REPLACE VIEW summaries.data_fingerprint AS
SELECT hash(
    (SELECT fingerprint FROM summaries.context_fingerprint),
    (SELECT (count(*), sum(hash(run_id, name, dataset_id))) FROM main.runs),
    (SELECT (count(*), sum(epoch_us(created_at)), count(*) FILTER (WHERE status = 'ok')) FROM main.predictions),
    (SELECT (count(*), sum(epoch_us(created_at)), count(verdict), count(*) FILTER (WHERE verdict)) FROM main.judgments)
) AS fingerprint;
