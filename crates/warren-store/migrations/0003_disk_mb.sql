-- The sandbox's disk bound in MiB (NULL: unbounded).
ALTER TABLE sandboxes ADD COLUMN disk_mb BIGINT;
