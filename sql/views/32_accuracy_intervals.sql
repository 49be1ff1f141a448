-- Bootstrap CIs (from `ctsvqa score`) beside the run's name; `stale` = judgments or predictions of the
-- run changed after the interval was computed (run `ctsvqa score` again).
CREATE OR REPLACE VIEW definitions.accuracy_ci AS
WITH changed AS (
    SELECT run_id, max(created_at) AS last_change FROM (
        SELECT run_id, created_at FROM main.judgments UNION ALL SELECT run_id, created_at FROM main.predictions)
    GROUP BY run_id
)
SELECT r.name AS model, a.panel, a.metric, a.estimate, a.ci_low, a.ci_high, a.level, a.n_resamples, a.seed,
       a.n_questions, a.n_volumes, coalesce(c.last_change > a.computed_at, false) AS stale,
       r.dataset_id AS dataset, a.run_id
FROM main.accuracy_intervals AS a
JOIN main.runs AS r USING (run_id)
LEFT JOIN changed AS c USING (run_id);

CREATE OR REPLACE VIEW definitions.model_comparisons AS
SELECT ra.name AS model_a, rb.name AS model_b, c.panel, c.n_shared, c.both_correct, c.only_a, c.only_b,
       c.both_wrong, c.p_value, c.dataset, c.run_a, c.run_b
FROM main.run_comparisons AS c
JOIN main.runs AS ra ON ra.run_id = c.run_a
JOIN main.runs AS rb ON rb.run_id = c.run_b;
