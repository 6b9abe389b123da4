-- A message body is sealed (AES-GCM: random-looking bytes), so pglz never shrinks it: every insert of a
-- body over ~2 KB paid a failed compression attempt before the body went to the TOAST table anyway.
-- EXTERNAL keeps it out of line, uncompressed. Only new values are affected (bodies stored before stay
-- as they are and read as before); readers fetch whole bodies, never slices.
ALTER TABLE messages ALTER COLUMN body SET STORAGE EXTERNAL;
