-- Whether each run's numbers are final, per jury panel: a panel's accuracy over a run is
-- 'judging' while some live judge of the panel has not given every answered prediction a final
-- judgment (none yet, or a transient 'error'/'timeout' the judge flow will retry), so a
-- half-judged accuracy cannot pass for a final one. Imported judges (their verdicts came from
-- published files) are final as imported: an item they dropped stays a no verdict.
-- 'unjudged': no judgment at all yet (panel NULL).
CREATE OR REPLACE VIEW definitions.run_status AS
WITH imported AS (
    SELECT DISTINCT judge_id FROM main.judgments WHERE source = 'upstream-import'
), run_panels AS (
    SELECT DISTINCT run_id, panel FROM definitions.run_juries
), pending AS (
    SELECT rp.run_id, rp.panel, jd.name AS judge,
           count(*) FILTER (WHERE j.status IS NULL OR j.status IN ('error', 'timeout')) AS n_pending
    FROM run_panels AS rp
    JOIN main.panel_members AS pm USING (panel)
    JOIN main.judges AS jd ON jd.judge_id = pm.judge_id
    JOIN main.predictions AS p ON p.run_id = rp.run_id AND p.status = 'ok'
    LEFT JOIN main.judgments AS j ON j.run_id = p.run_id AND j.qid = p.qid AND j.judge_id = pm.judge_id
    WHERE pm.judge_id NOT IN (SELECT judge_id FROM imported)
    GROUP BY rp.run_id, rp.panel, jd.name
), by_panel AS (
    SELECT rp.run_id, rp.panel,
           coalesce(sum(pd.n_pending), 0) AS n_pending_judgments,
           list(pd.judge ORDER BY pd.judge) FILTER (WHERE pd.n_pending > 0) AS judges_pending
    FROM run_panels AS rp
    LEFT JOIN pending AS pd USING (run_id, panel)
    GROUP BY rp.run_id, rp.panel
)
SELECT r.name AS model,
       b.panel,
       CASE WHEN b.panel IS NULL THEN 'unjudged'
            WHEN b.n_pending_judgments > 0 THEN 'judging'
            ELSE 'complete' END AS status,
       coalesce(b.n_pending_judgments, 0)::BIGINT AS n_pending_judgments,
       coalesce(b.judges_pending, []) AS judges_pending,
       r.dataset_id AS dataset,
       r.run_id
FROM main.runs AS r
LEFT JOIN by_panel AS b USING (run_id);
