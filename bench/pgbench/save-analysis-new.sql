-- POST /api/save-analysis with a new session id: the statement of upsert_many() in
-- src/conversations/store.rs in its single-row form (VALUES instead of unnest), with the
-- body's fields (transcript, analysis) set and the absent ones (user_id, language, audio_id)
-- kept. The insert path.
\set n random(1, 1000000000)
INSERT INTO conversations AS c (id, session_id, user_id, language, transcript, analysis, audio_id)
VALUES (gen_random_uuid(), 'pgb-new-' || gen_random_uuid(), NULL, NULL, 'hello world ' || :n, jsonb_build_object('score', (:n)::bigint % 10, 'n', (:n)::bigint), NULL)
ON CONFLICT (session_id) DO UPDATE SET
    user_id    = CASE WHEN false THEN EXCLUDED.user_id    ELSE c.user_id    END,
    language   = CASE WHEN false THEN EXCLUDED.language   ELSE c.language   END,
    transcript = CASE WHEN true  THEN EXCLUDED.transcript ELSE c.transcript END,
    analysis   = CASE WHEN true  THEN EXCLUDED.analysis   ELSE c.analysis   END,
    audio_id   = CASE WHEN false THEN EXCLUDED.audio_id   ELSE c.audio_id   END,
    version    = c.version + 1,
    updated_at = now()
WHERE (false AND c.user_id    IS DISTINCT FROM EXCLUDED.user_id)
   OR (false AND c.language   IS DISTINCT FROM EXCLUDED.language)
   OR (true  AND c.transcript IS DISTINCT FROM EXCLUDED.transcript)
   OR (true  AND c.analysis   IS DISTINCT FROM EXCLUDED.analysis)
   OR (false AND c.audio_id   IS DISTINCT FROM EXCLUDED.audio_id)
RETURNING *;
