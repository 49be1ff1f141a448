-- Per run and jury panel (a run nobody judged yet has one row with panel NULL). Accuracies are
-- fractions over the questions that have a prediction (NULL while unjudged); coverage =
-- n_predictions / questions in the run's dataset. majority_se = sqrt(p(1-p)/n).
-- status (from run_status): 'judging' while some judge of the panel still owes judgments
-- (n_pending_judgments of them): such an accuracy is not final and must not be read as one.
CREATE OR REPLACE VIEW definitions.model_accuracy AS
WITH n_q AS (
    SELECT dataset_id, count(*) AS n_questions FROM main.questions GROUP BY dataset_id
), n_p AS (
    SELECT run_id,
           count(*) FILTER (WHERE status = 'ok') AS n_predictions,
           count(*) FILTER (WHERE status <> 'ok') AS n_failed
    FROM main.predictions GROUP BY run_id
), jury AS (
    SELECT run_id, panel,
           count(*) AS n_judged,
           avg(majority_correct::DOUBLE) AS majority_accuracy,
           avg(strict_correct::DOUBLE) AS strict_accuracy,
           max(jury_size) AS jury_size,
           count(*) FILTER (WHERE no_verdict > 0) AS n_incomplete
    FROM definitions.jury_verdicts GROUP BY run_id, panel
)
SELECT r.name AS model,
       coalesce(n_q.n_questions, 0) AS n_questions,
       coalesce(n_p.n_predictions, 0) AS n_predictions,
       jury.majority_accuracy,
       jury.strict_accuracy,
       coalesce(n_p.n_predictions, 0) / nullif(n_q.n_questions, 0) AS coverage,
       jury.panel,
       jury.jury_size,
       coalesce(jury.n_incomplete, 0) AS n_incomplete_juries,
       coalesce(n_p.n_failed, 0) AS n_failed_predictions,
       sqrt(jury.majority_accuracy * (1 - jury.majority_accuracy) / jury.n_judged) AS majority_se,
       r.dataset_id AS dataset,
       r.run_id,
       coalesce(rs.status, 'unjudged') AS status,
       coalesce(rs.n_pending_judgments, 0) AS n_pending_judgments
FROM main.runs AS r
LEFT JOIN n_q ON n_q.dataset_id = r.dataset_id
LEFT JOIN n_p USING (run_id)
LEFT JOIN jury USING (run_id)
LEFT JOIN definitions.run_status AS rs ON rs.run_id = r.run_id AND rs.panel IS NOT DISTINCT FROM jury.panel;
