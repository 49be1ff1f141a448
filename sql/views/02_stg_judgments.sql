-- Judgments with model and judge names. verdict is NULL for every failure (status <> 'ok').
CREATE OR REPLACE VIEW definitions.stg_judgments AS
SELECT r.name AS model, j.qid, jd.name AS judge, j.verdict, j.status, j.reason,
       r.dataset_id AS dataset, j.run_id, j.judge_id
FROM main.judgments AS j
JOIN main.runs AS r USING (run_id)
JOIN main.judges AS jd USING (judge_id);
