-- Store one flush of judging results (staged as new_calls, new_cache, new_judgments), atomically.
-- A stored verdict is never overwritten by a failure; a failure is replaced by a later result.
INSERT INTO judge_calls BY NAME SELECT * FROM new_calls ON CONFLICT DO NOTHING;

INSERT INTO judge_cache BY NAME SELECT * FROM new_cache ON CONFLICT DO NOTHING;

INSERT INTO judgments BY NAME SELECT * FROM new_judgments
ON CONFLICT (run_id, qid, judge_id) DO UPDATE SET
    verdict = excluded.verdict, status = excluded.status, reason = excluded.reason,
    raw_response = excluded.raw_response, tokens_in = excluded.tokens_in, tokens_out = excluded.tokens_out,
    latency_ms = excluded.latency_ms, cost_usd = excluded.cost_usd, source = excluded.source,
    item_key = excluded.item_key, call_id = excluded.call_id, shared = excluded.shared, created_at = now()
WHERE judgments.status <> 'ok';
