-- The user commands run as by default (NULL: root).
ALTER TABLE sandboxes ADD COLUMN default_user TEXT;
