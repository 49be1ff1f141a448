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

-- model_comparisons: two runs under one panel. The published-protocol columns compare each run as its
-- own jury judged it (p_value: exact McNemar; p_holm: Holm over the dataset's and panel's comparisons;
-- p_clustered: the paired difference with volumes as clusters). The common_* columns compare the two on
-- the judges both juries have (common_judges; same_jury when nothing was left out), so a run without
-- one judge's verdicts is not ranked against the others on a different majority.
CREATE OR REPLACE VIEW definitions.model_comparisons AS
SELECT ra.name AS model_a, rb.name AS model_b, c.panel, c.n_shared, c.both_correct, c.only_a, c.only_b,
       c.both_wrong, c.diff, c.p_value, c.p_holm, c.p_clustered, c.p_clustered_holm, c.n_volumes,
       c.common_judges, c.same_jury, c.common_n_shared, c.common_only_a, c.common_only_b, c.common_diff,
       c.common_p_value, c.common_p_holm, c.common_p_clustered, c.dataset, c.run_a, c.run_b
FROM main.run_comparisons AS c
JOIN main.runs AS ra ON ra.run_id = c.run_a
JOIN main.runs AS rb ON rb.run_id = c.run_b;
