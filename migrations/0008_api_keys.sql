-- API keys (issue 12): callers authenticate with `Authorization: Bearer <secret>`. A key's
-- `name` is its owner (the service or person holding it; several keys may share one, so a key
-- can be rotated); `admin` keys see every owner's exports; `datasets` limits a key to some
-- datasets (null: all). Only a SHA-256 of the secret is kept: the secret is printed once, at
-- `exportd keys create`, and a stolen database yields no usable key. Secrets carry 256 random
-- bits, so a fast hash is enough (no password stretching needed). Revoked keys stay listed.
create table api_keys (
    id uuid primary key,
    name text not null check (name ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$'),
    secret_sha256 bytea not null check (octet_length(secret_sha256) = 32),
    admin boolean not null default false,
    datasets text[],
    created_at timestamptz not null default now(),
    revoked_at timestamptz
);
create index api_keys_name_idx on api_keys (name);
