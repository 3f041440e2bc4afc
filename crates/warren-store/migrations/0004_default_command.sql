-- The command an exec runs when it names none: the image's Entrypoint + Cmd
-- at create time, as a JSON array (NULL: none).
ALTER TABLE sandboxes ADD COLUMN default_command TEXT;
