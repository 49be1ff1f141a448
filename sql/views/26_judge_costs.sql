-- What judging cost, per judge: provider calls (retries included), tokens, dollars, latency, and
-- how many judgments the cache answered for free.
CREATE OR REPLACE VIEW definitions.judge_costs AS
WITH calls AS (
    SELECT judge_id,
           count(*) AS n_calls,
           sum(attempts) AS n_attempts,
           sum(n_items) AS n_items_sent,
           count(*) FILTER (WHERE status <> 'ok') AS n_failed_calls,
           sum(tokens_in) AS tokens_in,
           sum(tokens_out) AS tokens_out,
           sum(cost_usd) AS cost_usd,
           median(latency_ms) AS median_latency_ms
    FROM main.judge_calls GROUP BY judge_id
), hits AS (
    SELECT judge_id, count(*) AS n_cache_hits FROM main.judgments WHERE source = 'cache' GROUP BY judge_id
)
SELECT jd.name AS judge, jd.provider, jd.model,
       coalesce(c.n_calls, 0) AS n_calls,
       coalesce(c.n_attempts, 0) AS n_attempts,
       coalesce(c.n_items_sent, 0) AS n_items_sent,
       coalesce(c.n_failed_calls, 0) AS n_failed_calls,
       coalesce(h.n_cache_hits, 0) AS n_cache_hits,
       coalesce(c.tokens_in, 0) AS tokens_in,
       coalesce(c.tokens_out, 0) AS tokens_out,
       coalesce(c.cost_usd, 0) AS cost_usd,
       c.median_latency_ms,
       jd.judge_id
FROM main.judges AS jd
LEFT JOIN calls AS c USING (judge_id)
LEFT JOIN hits AS h USING (judge_id);
