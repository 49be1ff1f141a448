-- The jury of a run: every judge with at least one judgment (of any status) for that run.
-- A judge that silently dropped an item is still on the jury; the item counts as no verdict.
CREATE OR REPLACE VIEW run_juries AS
SELECT DISTINCT model, judge, dataset, run_id, judge_id
FROM stg_judgments;
