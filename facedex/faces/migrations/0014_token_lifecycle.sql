-- Tokens get an id (to list and revoke them without ever showing a secret again) and an optional expiry.
-- Revocation is announced with NOTIFY facedex_token_revoked (payload: the token hash, hex) so every API
-- instance drops its cached entry at once (facedex/auth.py).
ALTER TABLE tokens ADD COLUMN token_id uuid NOT NULL DEFAULT gen_random_uuid();
ALTER TABLE tokens ADD COLUMN expire_time timestamptz;
CREATE UNIQUE INDEX tokens_id ON tokens (token_id);
CREATE INDEX tokens_account ON tokens (account_id, create_time);
