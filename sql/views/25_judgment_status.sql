-- How each judge's judgments of each run ended, to audit failures next to the accuracies.
CREATE OR REPLACE VIEW judgment_status AS
SELECT model, judge, status, count(*) AS n, dataset, run_id
FROM stg_judgments
GROUP BY dataset, model, run_id, judge, status;
