-- Written into every snapshot: when it was taken, from which warehouse, and which runs' numbers
-- were not final then (status 'judging' in run_status), so a half-judged accuracy read from the
-- snapshot cannot pass for a final one.
CREATE TABLE snapshot_info AS
SELECT now() AS taken_at,
       $source AS source_db,
       (SELECT max(version) FROM schema_version) AS schema_version,
       (SELECT refreshed_at FROM summaries.state) AS summaries_refreshed_at,
       (SELECT coalesce(list(model || ' (panel ' || panel || '): ' || n_pending_judgments || ' judgments pending from '
                             || array_to_string(judges_pending, ', ') ORDER BY dataset, model, panel), [])
        FROM run_status WHERE status = 'judging') AS runs_incomplete;
