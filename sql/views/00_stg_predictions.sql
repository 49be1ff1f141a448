-- Predictions with the run's name as `model` and its dataset. status 'ok' = the model answered.
CREATE OR REPLACE VIEW stg_predictions AS
SELECT r.name AS model, p.qid, p.text, p.status, p.reason, r.dataset_id AS dataset, p.run_id
FROM predictions AS p
JOIN runs AS r USING (run_id);
