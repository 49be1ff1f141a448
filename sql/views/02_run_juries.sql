-- run_judges: every judge with at least one judgment (of any status) for a run.
-- run_juries: the jury of a run under each panel = the panel's members among its run_judges.
-- A judge that silently dropped an item is still on the jury; the item counts as no verdict.
CREATE OR REPLACE VIEW run_judges AS
SELECT DISTINCT model, judge, dataset, run_id, judge_id
FROM stg_judgments;

CREATE OR REPLACE VIEW run_juries AS
SELECT rj.model, pm.panel, rj.judge, rj.dataset, rj.run_id, rj.judge_id
FROM run_judges AS rj
JOIN panel_members AS pm USING (judge_id);
