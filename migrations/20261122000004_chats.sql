-- One chat per group of participants. participants_key is the sorted, de-duplicated ids joined
-- by ',' - a character no id may contain - so two different groups can never share a key (the
-- legacy "userA_userB" key collided as soon as an id held '_').
CREATE TABLE chats (
    id               uuid        PRIMARY KEY,
    participants     text[]      NOT NULL,
    participants_key text        NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT chats_participants_key_unique UNIQUE (participants_key),
    CONSTRAINT chats_participants_key_matches_participants
        CHECK (participants_key = array_to_string(participants, ',')),
    CONSTRAINT chats_has_2_to_32_participants
        CHECK (cardinality(participants) BETWEEN 2 AND 32)
);

-- GET /api/chats?participant=... : "participants @> ARRAY[$1]" uses this index.
CREATE INDEX chats_participants_gin ON chats USING gin (participants);
