-- One row per question that has a prediction (status 'ok') in a run with a jury.
-- Only true/false verdicts are votes; failures and dropped items are `no_verdict`.
--   majority_correct = yes_votes * 2 > jury_size      strict_correct = yes_votes = jury_size
CREATE OR REPLACE VIEW jury_verdicts AS
WITH sizes AS (
    SELECT run_id, count(*) AS jury_size FROM run_juries GROUP BY run_id
), votes AS (
    SELECT run_id, qid,
           count(*) FILTER (WHERE verdict) AS yes_votes,
           count(*) FILTER (WHERE NOT verdict) AS no_votes
    FROM stg_judgments
    WHERE verdict IS NOT NULL
    GROUP BY run_id, qid
)
SELECT p.model,
       p.qid,
       s.jury_size::INTEGER AS jury_size,
       coalesce(v.yes_votes, 0)::INTEGER AS yes_votes,
       coalesce(v.no_votes, 0)::INTEGER AS no_votes,
       (s.jury_size - coalesce(v.yes_votes, 0) - coalesce(v.no_votes, 0))::INTEGER AS no_verdict,
       coalesce(v.yes_votes, 0) * 2 > s.jury_size AS majority_correct,
       coalesce(v.yes_votes, 0) = s.jury_size AS strict_correct,
       p.dataset,
       p.run_id
FROM stg_predictions AS p
JOIN sizes AS s USING (run_id)
LEFT JOIN votes AS v USING (run_id, qid)
WHERE p.status = 'ok';
