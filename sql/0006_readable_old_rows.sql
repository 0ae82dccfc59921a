-- Rows written before 0005_readable_rows.sql made to fit its checks, then the checks made valid
-- for the whole table. In a file of its own so that this transaction holds no lock that stops
-- reads or writes: the UPDATE locks only the rows it changes, and VALIDATE CONSTRAINT takes a
-- SHARE UPDATE EXCLUSIVE lock.
--
-- Metadata that is not an object is kept under the key "value" ({"value": [1, 2]}), metadata
-- too deep to keep as JSON is kept as its text ({"value": "{\"a\": ..."}), and timestamps out
-- of range are moved to the nearest bound.

UPDATE task_build_history
SET metadata = CASE
        WHEN metadata IS NULL OR task_build_history_metadata_fits_v1(metadata) THEN metadata
        WHEN task_build_history_metadata_fits_v1(jsonb_build_object('value', metadata))
            THEN jsonb_build_object('value', metadata)
        ELSE jsonb_build_object('value', metadata::text)
    END,
    created_at = least(greatest(created_at, '0001-01-01 00:00:00+00'),
                       '9998-12-31 23:59:59.999999+00'),
    expires_at = least(greatest(expires_at, '0001-01-01 00:00:00+00'),
                       '9999-12-31 23:59:59.999999+00')
WHERE NOT (metadata IS NULL OR task_build_history_metadata_fits_v1(metadata))
    OR created_at < '0001-01-01 00:00:00+00' OR created_at >= '9999-01-01 00:00:00+00'
    OR expires_at < '0001-01-01 00:00:00+00' OR expires_at > '9999-12-31 23:59:59.999999+00';

ALTER TABLE task_build_history VALIDATE CONSTRAINT task_build_history_metadata_check;
ALTER TABLE task_build_history VALIDATE CONSTRAINT task_build_history_created_at_check;
ALTER TABLE task_build_history VALIDATE CONSTRAINT task_build_history_expires_at_check;

