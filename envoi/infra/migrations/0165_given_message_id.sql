-- A Message-ID the caller gave with h:Message-Id (POST /v3/{domain}/messages) is unique per domain: the
-- first stored copy of such a message is flagged, and this partial unique index refuses a second one in
-- the accept's own insert (no extra round trip on the send path). Generated ids are not flagged: they are
-- unique by construction, and a batch send's copies share theirs.
ALTER TABLE messages ADD COLUMN IF NOT EXISTS message_id_given boolean NOT NULL DEFAULT false;
CREATE UNIQUE INDEX IF NOT EXISTS messages_given_message_id ON messages (domain_id, message_id) WHERE message_id_given;
