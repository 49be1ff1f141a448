-- The benchmark's headline table: each model's jury accuracy on one data set under one panel.
SELECT model, panel, n_predictions, n_questions, majority_accuracy, strict_accuracy, status, n_pending_judgments
FROM model_accuracy
WHERE dataset = $dataset AND panel = $panel
ORDER BY majority_accuracy DESC, model
