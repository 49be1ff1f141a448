-- run_judges: every judge with at least one judgment (of any status) for a run.
-- run_juries: the jury of a run under each panel = the panel's members among its run_judges.
-- A judge that silently dropped an item is still on the jury; the item counts as no verdict.
-- (DISTINCT on the ids first: names are joined to a few hundred rows, not to every judgment.)
CREATE OR REPLACE VIEW definitions.run_judges AS
SELECT r.name AS model, jd.name AS judge, r.dataset_id AS dataset, rj.run_id, rj.judge_id
FROM (SELECT DISTINCT run_id, judge_id FROM main.judgments) AS rj
JOIN main.runs AS r USING (run_id)
JOIN main.judges AS jd USING (judge_id);

CREATE OR REPLACE VIEW definitions.run_juries AS
SELECT rj.model, pm.panel, rj.judge, rj.dataset, rj.run_id, rj.judge_id
FROM definitions.run_judges AS rj
JOIN main.panel_members AS pm USING (judge_id);
