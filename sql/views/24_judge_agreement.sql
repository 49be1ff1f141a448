-- Pairwise agreement between the judges of a run, over the questions where both gave a
-- true/false verdict. cohen_kappa is NULL when chance agreement is 1 (both judges constant).
CREATE OR REPLACE VIEW judge_agreement AS
WITH pairs AS (
    SELECT a.dataset, a.model, a.run_id, a.judge AS judge_a, b.judge AS judge_b,
           a.verdict AS va, b.verdict AS vb
    FROM stg_judgments AS a
    JOIN stg_judgments AS b ON b.run_id = a.run_id AND b.qid = a.qid AND a.judge < b.judge
    JOIN predictions AS p ON p.run_id = a.run_id AND p.qid = a.qid AND p.status = 'ok'
    WHERE a.verdict IS NOT NULL AND b.verdict IS NOT NULL
), rates AS (
    SELECT dataset, model, run_id, judge_a, judge_b,
           count(*) AS n,
           avg((va = vb)::DOUBLE) AS po,
           avg(va::DOUBLE) AS pa,
           avg(vb::DOUBLE) AS pb
    FROM pairs
    GROUP BY dataset, model, run_id, judge_a, judge_b
), chance AS (
    SELECT *, pa * pb + (1 - pa) * (1 - pb) AS pe FROM rates
)
SELECT model, judge_a, judge_b, n,
       po AS agreement,
       CASE WHEN abs(1 - pe) < 1e-12 THEN NULL ELSE (po - pe) / (1 - pe) END AS cohen_kappa,
       pe AS chance_agreement,
       dataset,
       run_id
FROM chance;
