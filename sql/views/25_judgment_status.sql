-- How each judge's judgments of each run ended, to audit failures next to the accuracies.
CREATE OR REPLACE VIEW definitions.judgment_status AS
SELECT r.name AS model, jd.name AS judge, s.status, s.n, r.dataset_id AS dataset, s.run_id
FROM (SELECT run_id, judge_id, status, count(*) AS n FROM main.judgments GROUP BY run_id, judge_id, status) AS s
JOIN main.runs AS r USING (run_id)
JOIN main.judges AS jd USING (judge_id);
