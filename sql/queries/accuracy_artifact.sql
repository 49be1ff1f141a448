-- The accuracy table the import and judge flows publish as a Prefect artifact ($1 dataset, $2 panel;
-- NULL for all). Percentages with one decimal, as the report prints them.
SELECT dataset, model, coalesce(panel, '(not judged)') AS panel, jury_size, n_questions, n_predictions,
       round(100 * majority_accuracy, 1) AS majority_pct, round(100 * strict_accuracy, 1) AS strict_pct,
       round(100 * coverage, 1) AS coverage_pct, n_failed_predictions, n_incomplete_juries
FROM model_accuracy
WHERE ($1 IS NULL OR dataset = $1) AND ($2 IS NULL OR panel = $2)
ORDER BY dataset, panel, model
