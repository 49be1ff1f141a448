-- One row per question that has a prediction (status 'ok'), per run and jury panel.
-- Only true/false verdicts of the panel's judges are votes; failures and dropped items are
-- `no_verdict`.   majority_correct = yes_votes * 2 > jury_size   strict_correct = yes_votes = jury_size
CREATE OR REPLACE VIEW jury_verdicts AS
WITH sizes AS (
    SELECT run_id, panel, count(*) AS jury_size FROM run_juries GROUP BY run_id, panel
), votes AS (
    SELECT j.run_id, pm.panel, j.qid,
           count(*) FILTER (WHERE j.verdict) AS yes_votes,
           count(*) FILTER (WHERE NOT j.verdict) AS no_votes
    FROM stg_judgments AS j
    JOIN panel_members AS pm USING (judge_id)
    WHERE j.verdict IS NOT NULL
    GROUP BY j.run_id, pm.panel, j.qid
)
SELECT p.model,
       p.qid,
       s.jury_size::INTEGER AS jury_size,
       coalesce(v.yes_votes, 0)::INTEGER AS yes_votes,
       coalesce(v.no_votes, 0)::INTEGER AS no_votes,
       (s.jury_size - coalesce(v.yes_votes, 0) - coalesce(v.no_votes, 0))::INTEGER AS no_verdict,
       coalesce(v.yes_votes, 0) * 2 > s.jury_size AS majority_correct,
       coalesce(v.yes_votes, 0) = s.jury_size AS strict_correct,
       s.panel,
       p.dataset,
       p.run_id
FROM stg_predictions AS p
JOIN sizes AS s USING (run_id)
LEFT JOIN votes AS v ON v.run_id = p.run_id AND v.panel = s.panel AND v.qid = p.qid
WHERE p.status = 'ok';
