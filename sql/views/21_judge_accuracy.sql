-- Per run and judge (every judge that judged the run, on a panel or not), over the run's
-- answered questions. n_no_verdict counts the questions this judge gave no true/false for:
-- failed calls, unparsed replies and items it never returned (n_missing).
-- (Per-run tallies combined through UNION ALL and inner joins rather than a LEFT JOIN per question:
-- cheaper, and a filter on run_id reaches every scan. Judgments exist only for answered
-- predictions: the loaders delete a judgment with its prediction's text; tests/test_views checks it.)
CREATE OR REPLACE VIEW definitions.judge_accuracy AS
WITH answered AS (
    SELECT run_id, count(*) AS n FROM main.predictions WHERE status = 'ok' GROUP BY run_id
), tally AS (
    SELECT run_id, judge_id, sum(n_rows) AS n_rows, sum(n_valid) AS n_valid, sum(n_yes) AS n_yes
    FROM (SELECT j.run_id, j.judge_id, 1 AS n_rows, (j.verdict IS NOT NULL)::INTEGER AS n_valid,
                 coalesce(j.verdict, false)::INTEGER AS n_yes
          FROM main.judgments AS j
          UNION ALL
          SELECT run_id, judge_id, 0, 0, 0 FROM definitions.run_judges)
    GROUP BY run_id, judge_id
)
SELECT rj.model,
       rj.judge,
       t.n_valid::BIGINT AS n_valid,
       t.n_yes::BIGINT AS n_yes,
       (a.n - t.n_valid)::BIGINT AS n_no_verdict,
       t.n_yes / nullif(t.n_valid, 0) AS accuracy,
       (a.n - t.n_rows)::BIGINT AS n_missing,
       rj.dataset,
       rj.run_id
FROM definitions.run_judges AS rj
JOIN answered AS a USING (run_id)
JOIN tally AS t USING (run_id, judge_id);
