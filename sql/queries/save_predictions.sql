-- Store one flush of the runner's predictions (staged as new_predictions), atomically. A row only
-- replaces a stored failure (a --retry-failed run); a stored answer is never overwritten, so a
-- second runner racing on the same run cannot change what was judged. Judgments of a replaced
-- failure cannot exist (only answers are judged), so none are touched.
INSERT INTO predictions BY NAME
SELECT run_id, qid, text, status, reason, provenance::JSON AS provenance FROM new_predictions
ON CONFLICT (run_id, qid) DO UPDATE SET
    text = excluded.text, status = excluded.status, reason = excluded.reason,
    provenance = excluded.provenance, created_at = now()
WHERE predictions.status <> 'ok';
