-- Answered predictions of the chosen runs that still need a judgment from judge $judge_id: none
-- yet, or only a transient failure ('error', 'timeout'), or with $retry_failed any failure.
-- item_key is the verdict-cache key: the same judge, question, reference and prediction.
SELECT p.run_id,
       r.name AS run_name,
       p.qid,
       q.question,
       q.answer,
       p.text AS prediction,
       sha256($judge_id || chr(31) || q.question || chr(31) || q.answer || chr(31) || p.text) AS item_key
FROM predictions AS p
JOIN runs AS r USING (run_id)
JOIN questions AS q ON q.dataset_id = r.dataset_id AND q.qid = p.qid
LEFT JOIN judgments AS j ON j.run_id = p.run_id AND j.qid = p.qid AND j.judge_id = $judge_id
WHERE p.status = 'ok'
  AND (len($runs) = 0 OR list_contains($runs, r.name) OR list_contains($runs, r.run_id))
  AND (j.qid IS NULL
       OR j.status IN ('error', 'timeout')
       OR ($retry_failed AND j.status <> 'ok'))
ORDER BY p.run_id, p.qid;
