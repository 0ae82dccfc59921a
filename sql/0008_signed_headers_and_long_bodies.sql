-- The consumer's own headers (x-received-at, x-unknown-task-since, x-replay-count and the rest)
-- are believed only on a copy it signed itself: a retry it parked, a dead letter `task-history
-- dlq replay` sent back. Anyone can publish headers of those names; only this deployment knows
-- the key of the signature (HMAC-SHA256, consumer/broker/signing.py). It is made here, once,
-- from the server's strong random source (gen_random_uuid), and only the consumer's role may
-- read it: the reading role and the publishers never see it.
CREATE TABLE task_build_history_secrets (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    header_key bytea NOT NULL CHECK (octet_length(header_key) >= 32)
);
INSERT INTO task_build_history_secrets (header_key)
VALUES (decode(replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''), 'hex'));

-- A dead letter's body over 1 MiB (no event is that large) is kept as its first 64 KiB, with
-- the whole body's length and SHA-256 here; `dlq replay` refuses such a letter. NULL: the body
-- column holds the whole body, as in every row written before. Nullable columns without a
-- default other than NULL: added without rewriting or scanning the table.
ALTER TABLE task_build_history_dead_letters
    ADD COLUMN original_body_bytes bigint,
    ADD COLUMN original_body_sha256 bytea;

DO $grants$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'task_history_consumer') THEN
        GRANT SELECT ON task_build_history_secrets TO task_history_consumer;
    END IF;
END
$grants$;
