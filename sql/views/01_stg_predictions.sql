-- Predictions with the run's name as `model` and its dataset. status 'ok' = the model answered.
CREATE OR REPLACE VIEW definitions.stg_predictions AS
SELECT r.name AS model, p.qid, p.text, p.status, p.reason, r.dataset_id AS dataset, p.run_id
FROM main.predictions AS p
JOIN main.runs AS r USING (run_id);
