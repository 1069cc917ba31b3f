-- POST /api/participations/{id}/clicks {"type":"chat"} on one hot participation (-D pid=<uuid>):
-- the counter UPDATE and its ledger row in one statement.
WITH u AS (
    UPDATE participations
    SET clicks = clicks + 1, chat_clicks = chat_clicks + 1, updated_at = now()
    WHERE id = :pid
    RETURNING *
)
INSERT INTO participation_events (participation_id, kind, clicks, chat_clicks)
SELECT id, 'click', 1, 1 FROM u
RETURNING participation_id;
