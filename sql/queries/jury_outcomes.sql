-- Majority/strict correctness per judged question, with its volume (the bootstrap's resampling unit).
SELECT jv.run_id, jv.panel, jv.dataset, q.volume, jv.qid, jv.majority_correct, jv.strict_correct
FROM jury_verdicts AS jv
JOIN questions AS q ON q.dataset_id = jv.dataset AND q.qid = jv.qid
WHERE jv.panel IS NOT NULL
ORDER BY jv.run_id, jv.panel, q.volume, jv.qid;
