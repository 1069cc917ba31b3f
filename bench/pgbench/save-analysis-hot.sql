-- POST /api/save-analysis on 100 hot session ids (pgb-hot-0 .. pgb-hot-99): the same statement
-- as save-analysis-new.sql, with a new analysis every time, so every call takes the DO UPDATE
-- path on a contended row (the retry storm / legacy second step).
\set n random(1, 1000000000)
\set k random(0, 99)
INSERT INTO conversations AS c (id, session_id, user_id, language, transcript, analysis, audio_id)
VALUES (gen_random_uuid(), 'pgb-hot-' || :k, NULL, NULL, 'hello world ' || :n, jsonb_build_object('score', (:n)::bigint % 10, 'n', (:n)::bigint), NULL)
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
