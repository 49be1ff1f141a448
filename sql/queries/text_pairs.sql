-- The pairs to score: answered predictions of the chosen runs ($run_ids; NULL = all runs) whose
-- current (reference, prediction) texts have no score under $version yet.
WITH pairs AS (
    SELECT p.run_id, p.qid, q.answer AS reference, p.text AS prediction,
           sha256(q.answer || chr(0) || p.text) AS pair_sha256
    FROM predictions AS p
    JOIN runs AS r USING (run_id)
    JOIN questions AS q ON q.dataset_id = r.dataset_id AND q.qid = p.qid
    WHERE p.status = 'ok' AND ($run_ids IS NULL OR list_contains($run_ids, p.run_id))
)
SELECT pairs.*
FROM pairs
LEFT JOIN text_scores AS s
       ON s.run_id = pairs.run_id AND s.qid = pairs.qid AND s.metrics_version = $version
WHERE s.pair_sha256 IS DISTINCT FROM pairs.pair_sha256
ORDER BY pairs.run_id, pairs.qid;
