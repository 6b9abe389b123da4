-- Postgres's share of each message on the send path (issue 20; figures in docs/benchmarks.md, branch pgcut).
--
-- messages.body is sealed (AEAD ciphertext): it never compresses, yet every row over ~2 KB had pglz try,
-- then had the body cut into ~2 KB chunks in the TOAST table (three rows and three index entries for a
-- 5 KB message), and the relay read them back through the TOAST index. EXTERNAL: never compressed; the
-- target: a row up to a heap page (8160 bytes) keeps its body inline. Bigger rows are stored out of line
-- as before. The cost: a 4-8 KB message takes a page of its own (~8.3 KB on disk instead of ~6.3 KB for a
-- 5 KB body) until its body expires. Existing rows are left as they are (both forms read the same).
ALTER TABLE messages ALTER COLUMN body SET STORAGE EXTERNAL;
ALTER TABLE messages SET (toast_tuple_target = 8160);

-- The relay's claim sets leased_until and lease_owner, which no index covers: a HOT update (no new index
-- entries) when the row's page has room for the new version, which inserts at fillfactor 100 never leave.
-- New pages are filled to half, so every row of a page can take its claimed version (at 70 % a 500-row
-- claim found room for ~40 % of them). The outcome's update, which changes status, is never HOT (status
-- is in recipients_due's predicate) but finds the page pruned of the claim's old versions. The cost: the
-- schedule's pages half full, small beside the bodies (~180 bytes a recipient against ~5 KB a message).
-- Pages already written are left as they are.
ALTER TABLE recipients SET (fillfactor = 50);
