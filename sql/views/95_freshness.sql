-- Whether the summary tables match the data right now, and the guard every public view over a
-- summary table applies: a stale summary raises instead of answering with old numbers.
CREATE OR REPLACE VIEW summaries.freshness AS
SELECT s.data_fingerprint IS NOT DISTINCT FROM f.fingerprint AS fresh, s.refreshed_at
FROM summaries.state AS s, summaries.data_fingerprint AS f;

CREATE OR REPLACE MACRO summaries.fresh_or_fail() AS (
    SELECT CASE WHEN fresh THEN true ELSE error(
        'ctsvqa: the summary tables are older than the data (predictions or judgments changed since ' ||
        coalesce('their refresh at ' || refreshed_at::VARCHAR, 'the schema was created') ||
        '). Run `ctsvqa db refresh`, or read the live definition instead, e.g. FROM definitions.model_accuracy.')
    END
    FROM summaries.freshness
);
