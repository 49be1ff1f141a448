-- Per run and judge: how many of its verdicts were shared, i.e. given once for an identical question,
-- reference and prediction and reused (judgments.shared; for rows older than that column, a cache hit).
-- A judge with share_verdicts: false judges every item on its own; imported verdicts are not counted.
CREATE OR REPLACE VIEW definitions.shared_verdicts AS
WITH j AS (
    SELECT run_id, judge_id, coalesce(shared, source = 'cache') AS shared
    FROM main.judgments
    WHERE status = 'ok' AND item_key IS NOT NULL
)
SELECT r.name AS model,
       jd.name AS judge,
       count(*)::INTEGER AS n_verdicts,
       count(*) FILTER (WHERE j.shared)::INTEGER AS n_shared,
       r.dataset_id AS dataset,
       j.run_id,
       j.judge_id
FROM j
JOIN main.runs AS r USING (run_id)
JOIN main.judges AS jd USING (judge_id)
GROUP BY r.dataset_id, r.name, j.run_id, jd.name, j.judge_id;
