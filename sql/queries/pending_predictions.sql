-- Questions of dataset $dataset that run $run_id still has to answer: no stored prediction, or
-- with $retry_failed a stored failure. $limit: only the first $limit volumes in dataset order
-- (positions are 0..n-1). Ordered by volume position so each volume's questions come together.
SELECT q.volume, q.qid, q.question
FROM questions AS q
JOIN volumes AS v USING (dataset_id, volume)
LEFT JOIN predictions AS p ON p.run_id = $run_id AND p.qid = q.qid
WHERE q.dataset_id = $dataset
  AND ($limit IS NULL OR v.position < $limit)
  AND (p.qid IS NULL OR ($retry_failed AND p.status <> 'ok'))
ORDER BY v.position, q.idx;
