-- One row per question that has a prediction (status 'ok'), per run and jury panel.
-- Only true/false verdicts of the panel's judges are votes; failures and dropped items are
-- `no_verdict`.   majority_correct = yes_votes * 2 > jury_size   strict_correct = yes_votes = jury_size
-- (Predictions and votes are tallied in one aggregate rather than joined, so a filter on run_id
-- reaches every table scanned: a summary refresh of one run reads only that run.)
CREATE OR REPLACE VIEW definitions.jury_verdicts AS
WITH sizes AS (
    SELECT run_id, panel, count(*) AS jury_size FROM definitions.run_juries GROUP BY run_id, panel
), items AS (
    SELECT p.run_id, p.qid, s.panel, s.jury_size, NULL::BOOLEAN AS verdict
    FROM main.predictions AS p
    JOIN sizes AS s USING (run_id)
    WHERE p.status = 'ok'
    UNION ALL
    SELECT j.run_id, j.qid, pm.panel, NULL, j.verdict
    FROM main.judgments AS j
    JOIN main.panel_members AS pm USING (judge_id)
    WHERE j.verdict IS NOT NULL
), tallies AS (
    SELECT run_id, qid, panel,
           max(jury_size) AS jury_size,              -- NULL: votes on a question without a prediction
           count(*) FILTER (WHERE verdict) AS yes_votes,
           count(*) FILTER (WHERE NOT verdict) AS no_votes
    FROM items
    GROUP BY run_id, qid, panel
)
SELECT r.name AS model,
       t.qid,
       t.jury_size::INTEGER AS jury_size,
       t.yes_votes::INTEGER AS yes_votes,
       t.no_votes::INTEGER AS no_votes,
       (t.jury_size - t.yes_votes - t.no_votes)::INTEGER AS no_verdict,
       t.yes_votes * 2 > t.jury_size AS majority_correct,
       t.yes_votes = t.jury_size AS strict_correct,
       t.panel,
       r.dataset_id AS dataset,
       t.run_id
FROM tallies AS t
JOIN main.runs AS r USING (run_id)
WHERE t.jury_size IS NOT NULL;
