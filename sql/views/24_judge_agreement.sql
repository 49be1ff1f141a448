-- Pairwise agreement between the judges of a run, over the questions where both gave a
-- true/false verdict. cohen_kappa is NULL when chance agreement is 1 (both judges constant).
-- (Pairs are formed on the ids and named afterwards; judge names order each pair.)
CREATE OR REPLACE VIEW definitions.judge_agreement AS
WITH verdicts AS NOT MATERIALIZED (      -- inlined, so a filter on run_id reaches the scans
    SELECT j.run_id, j.qid, jd.name AS judge, j.verdict
    FROM main.judgments AS j
    JOIN main.judges AS jd USING (judge_id)
    WHERE j.verdict IS NOT NULL
), pairs AS (
    SELECT a.run_id, a.judge AS judge_a, b.judge AS judge_b, a.verdict AS va, b.verdict AS vb
    FROM verdicts AS a
    JOIN verdicts AS b ON b.run_id = a.run_id AND b.qid = a.qid AND a.judge < b.judge
    SEMI JOIN main.predictions AS p ON p.run_id = a.run_id AND p.qid = a.qid AND p.status = 'ok'
), rates AS (
    SELECT run_id, judge_a, judge_b,
           count(*) AS n,
           avg((va = vb)::DOUBLE) AS po,
           avg(va::DOUBLE) AS pa,
           avg(vb::DOUBLE) AS pb
    FROM pairs
    GROUP BY run_id, judge_a, judge_b
), chance AS (
    SELECT *, pa * pb + (1 - pa) * (1 - pb) AS pe FROM rates
)
SELECT r.name AS model, judge_a, judge_b, n,
       po AS agreement,
       CASE WHEN abs(1 - pe) < 1e-12 THEN NULL ELSE (po - pe) / (1 - pe) END AS cohen_kappa,
       pe AS chance_agreement,
       r.dataset_id AS dataset,
       c.run_id
FROM chance AS c
JOIN main.runs AS r USING (run_id);
