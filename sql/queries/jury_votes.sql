-- Every vote of a run's jury under each panel, on questions with a prediction, with the question's
-- volume: what a comparison on a jury two runs have in common is recomputed from.
SELECT rj.run_id, rj.panel, rj.dataset, q.volume, j.qid, rj.judge, j.verdict
FROM run_juries AS rj
JOIN judgments AS j ON j.run_id = rj.run_id AND j.judge_id = rj.judge_id
JOIN predictions AS p ON p.run_id = j.run_id AND p.qid = j.qid AND p.status = 'ok'
JOIN questions AS q ON q.dataset_id = rj.dataset AND q.qid = j.qid
ORDER BY rj.run_id, rj.panel, j.qid, rj.judge
