-- The kept pairs of one run whose stored scores describe the current texts, in qid order, with the
-- hash that identifies the set (corpus BLEU is computed over exactly these).
WITH current AS (
    SELECT p.qid, q.answer AS reference, p.text AS prediction, s.pair_sha256
    FROM predictions AS p
    JOIN runs AS r USING (run_id)
    JOIN questions AS q ON q.dataset_id = r.dataset_id AND q.qid = p.qid
    JOIN text_scores AS s
      ON s.run_id = p.run_id AND s.qid = p.qid AND s.metrics_version = $version
     AND s.pair_sha256 = sha256(q.answer || chr(0) || p.text)
    WHERE p.run_id = $run_id AND p.status = 'ok' AND s.kept
)
SELECT qid, reference, prediction, pair_sha256 FROM current ORDER BY qid;
