-- Per run and judge (every judge that judged the run, on a panel or not), over the run's
-- answered questions. n_no_verdict counts the questions this judge gave no true/false for:
-- failed calls, unparsed replies and items it never returned (n_missing).
CREATE OR REPLACE VIEW definitions.judge_accuracy AS
SELECT p.model,
       rj.judge,
       count(j.verdict) AS n_valid,
       count(*) FILTER (WHERE j.verdict) AS n_yes,
       count(*) FILTER (WHERE j.verdict IS NULL) AS n_no_verdict,
       count(*) FILTER (WHERE j.verdict) / nullif(count(j.verdict), 0) AS accuracy,
       count(*) FILTER (WHERE j.qid IS NULL) AS n_missing,
       p.dataset,
       p.run_id
FROM definitions.stg_predictions AS p
JOIN definitions.run_judges AS rj USING (run_id)
LEFT JOIN main.judgments AS j
       ON j.run_id = p.run_id AND j.qid = p.qid AND j.judge_id = rj.judge_id
WHERE p.status = 'ok'
GROUP BY p.dataset, p.model, p.run_id, rj.judge;
