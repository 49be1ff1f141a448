-- Whether each run's numbers are final, per jury panel: a panel's accuracy over a run is
-- 'judging' while some live judge of the panel has not given every answered prediction a final
-- judgment (none yet, or a transient 'error'/'timeout' the judge flow will retry), so a
-- half-judged accuracy cannot pass for a final one. Imported judges (their verdicts came from
-- published files) are final as imported: an item they dropped stays a no verdict.
-- 'unjudged': no judgment at all yet (panel NULL).
-- (No LEFT JOINs: rows are tallied through UNION ALL and inner joins, so a filter on run_id reaches
-- every scan and a summary refresh of one run reads only that run. Judgments exist only for answered
-- predictions: the loaders delete a judgment with its prediction.)
CREATE OR REPLACE VIEW definitions.run_status AS
WITH imported AS (
    SELECT DISTINCT judge_id FROM main.judgments WHERE source = 'upstream-import'
), owing AS (                 -- live members of each panel that has judged the run
    SELECT rp.run_id, rp.panel, pm.judge_id
    FROM (SELECT DISTINCT run_id, panel FROM definitions.run_juries) AS rp
    JOIN main.panel_members AS pm USING (panel)
    WHERE pm.judge_id NOT IN (SELECT judge_id FROM imported)
), tally AS (                 -- +1 per answered prediction, -1 per final judgment, per live member
    SELECT o.run_id, o.panel, o.judge_id, 1 AS n
    FROM owing AS o JOIN main.predictions AS p ON p.run_id = o.run_id AND p.status = 'ok'
    UNION ALL
    SELECT o.run_id, o.panel, o.judge_id, -1
    FROM owing AS o JOIN main.judgments AS j ON j.run_id = o.run_id AND j.judge_id = o.judge_id
    WHERE j.status NOT IN ('error', 'timeout')
), pending AS (
    SELECT t.run_id, t.panel, jd.name AS judge, sum(t.n) AS n_pending
    FROM tally AS t JOIN main.judges AS jd USING (judge_id)
    GROUP BY t.run_id, t.panel, jd.name
), rows AS (
    SELECT run_id, panel, n_pending, judge FROM pending
    UNION ALL                                  -- every panel that judged the run, owing or not
    SELECT DISTINCT run_id, panel, 0, NULL FROM definitions.run_juries
    UNION ALL                                  -- every run, for those no panel judged yet
    SELECT run_id, NULL, 0, NULL FROM main.runs
), by_panel AS (
    SELECT run_id, panel,
           sum(n_pending) AS n_pending_judgments,
           list(judge ORDER BY judge) FILTER (WHERE n_pending > 0) AS judges_pending
    FROM rows
    GROUP BY run_id, panel
    QUALIFY panel IS NOT NULL OR count(panel) OVER (PARTITION BY run_id) = 0
)
SELECT r.name AS model,
       b.panel,
       CASE WHEN b.panel IS NULL THEN 'unjudged'
            WHEN b.n_pending_judgments > 0 THEN 'judging'
            ELSE 'complete' END AS status,
       b.n_pending_judgments::BIGINT AS n_pending_judgments,
       coalesce(b.judges_pending, []) AS judges_pending,
       r.dataset_id AS dataset,
       r.run_id
FROM by_panel AS b
JOIN main.runs AS r USING (run_id);
