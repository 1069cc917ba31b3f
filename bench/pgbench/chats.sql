-- POST /api/chats create-or-get over 1,000 groups: INSERT ... ON CONFLICT (participants_key)
-- DO NOTHING RETURNING *, and the SELECT of the existing chat when the insert returned nothing.
\set g random(0, 999)
WITH ins AS (
    INSERT INTO chats (id, participants, participants_key)
    VALUES (gen_random_uuid(), ARRAY['pgb-a-' || :g, 'pgb-b-' || :g], 'pgb-a-' || :g || ',pgb-b-' || :g)
    ON CONFLICT (participants_key) DO NOTHING
    RETURNING *
)
SELECT count(*) AS inserted FROM ins \gset
\if :inserted = 0
SELECT * FROM chats WHERE participants_key = 'pgb-a-' || :g || ',pgb-b-' || :g;
\endif
