-- POST /api/conversations create-or-get over 1,000 session ids: INSERT ... ON CONFLICT
-- (session_id) DO NOTHING RETURNING *, and the SELECT of the existing conversation when the
-- insert returned nothing.
\set g random(0, 999)
WITH ins AS (
    INSERT INTO conversations (id, session_id) VALUES (gen_random_uuid(), 'pgb-cg-' || :g)
    ON CONFLICT (session_id) DO NOTHING
    RETURNING *
)
SELECT count(*) AS inserted FROM ins \gset
\if :inserted = 0
SELECT * FROM conversations WHERE session_id = 'pgb-cg-' || :g;
\endif
