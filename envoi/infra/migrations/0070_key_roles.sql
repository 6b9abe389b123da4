-- Mailgun's key roles (its /v1/keys `role`): developer (everything but key management) and basic
-- (read-only) join admin, sending and the operator's own.
ALTER TABLE api_keys DROP CONSTRAINT api_keys_role_check;
ALTER TABLE api_keys ADD CONSTRAINT api_keys_role_check
    CHECK (role IN ('admin', 'developer', 'sending', 'basic', 'operator'));
