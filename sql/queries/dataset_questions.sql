-- Every question of dataset $dataset with its reference and categories (for adapters that learn
-- from the data set, e.g. the offline baselines).
SELECT q.qid, q.volume, q.question, q.answer,
       coalesce(list(c.category ORDER BY c.category) FILTER (WHERE c.category IS NOT NULL), []) AS categories
FROM questions AS q
LEFT JOIN question_categories AS c USING (dataset_id, qid)
WHERE q.dataset_id = $dataset
GROUP BY q.qid, q.volume, q.question, q.answer
ORDER BY q.qid;
