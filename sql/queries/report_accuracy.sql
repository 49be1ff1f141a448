-- Headline accuracy of a dataset's runs under one panel, with the bootstrap CI where it is current
-- (else a normal approximation from the binomial SE, flagged).
SELECT m.model, m.n_questions, m.n_predictions, m.coverage, m.jury_size, m.majority_accuracy, m.strict_accuracy,
       coalesce(ci.ci_low, m.majority_accuracy - 1.96 * m.majority_se) AS ci_low,
       coalesce(ci.ci_high, m.majority_accuracy + 1.96 * m.majority_se) AS ci_high,
       CASE WHEN ci.ci_low IS NULL THEN 'normal approximation' ELSE 'bootstrap by volume' END AS ci_method,
       m.n_failed_predictions, m.run_id, m.status, m.n_pending_judgments
FROM model_accuracy AS m
LEFT JOIN accuracy_ci AS ci
       ON ci.run_id = m.run_id AND ci.panel = m.panel AND ci.metric = 'majority' AND NOT ci.stale
WHERE m.dataset = $dataset AND m.panel = $panel
ORDER BY m.majority_accuracy DESC, m.model;
