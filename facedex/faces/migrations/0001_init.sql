-- Faces DB, version 1.
-- Every row carries or reaches an account_id: every query is scoped to the caller's account.

CREATE TABLE accounts (
    account_id   uuid PRIMARY KEY,
    name         text NOT NULL,
    create_time  timestamptz NOT NULL DEFAULT now()
);

-- Bearer tokens are stored as SHA-256 digests; the token itself is shown once, at creation.
CREATE TABLE tokens (
    token_hash   bytea PRIMARY KEY,
    account_id   uuid NOT NULL REFERENCES accounts ON DELETE CASCADE,
    name         text NOT NULL DEFAULT '',
    create_time  timestamptz NOT NULL DEFAULT now()
);

-- change_seq is the list's change-log head: the sequence number of its newest change.
-- Writers take the list row lock (SELECT ... FOR UPDATE) to allocate sequence numbers,
-- so per list the log has no gaps and commits in sequence order: a reader that has
-- applied everything up to N never later sees a change numbered <= N appear.
CREATE TABLE lists (
    list_id          uuid PRIMARY KEY,
    account_id       uuid NOT NULL REFERENCES accounts ON DELETE CASCADE,
    user_data        text NOT NULL DEFAULT '',
    create_time      timestamptz NOT NULL DEFAULT now(),
    last_update_time timestamptz NOT NULL DEFAULT now(),
    change_seq       bigint NOT NULL DEFAULT 0,
    face_count       bigint NOT NULL DEFAULT 0
);
CREATE INDEX lists_account ON lists (account_id, create_time);

-- face_id: UUIDv7 (time-ordered, facedex/ids.py), so bulk inserts append to the B-trees.
CREATE TABLE faces (
    face_id          uuid PRIMARY KEY,
    account_id       uuid NOT NULL REFERENCES accounts ON DELETE CASCADE,
    external_id      text,
    user_data        text NOT NULL DEFAULT '',
    create_time      timestamptz NOT NULL DEFAULT now(),
    last_update_time timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX faces_account ON faces (account_id, create_time);
CREATE INDEX faces_external ON faces (account_id, external_id) WHERE external_id IS NOT NULL;

-- One descriptor per (face, version): raw little-endian bytes, L2-normalised on ingest.
CREATE TABLE descriptors (
    face_id      uuid NOT NULL REFERENCES faces ON DELETE CASCADE,
    version      integer NOT NULL,
    descriptor   bytea NOT NULL,
    create_time  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (face_id, version)
);
-- Float bytes do not compress (EXTERNAL: never try), and a 2 KiB descriptor must stay in its row:
-- out-of-line TOAST would cost an extra table and index insert per face (measured: ~30% of import time).
ALTER TABLE descriptors ALTER COLUMN descriptor SET STORAGE EXTERNAL;
ALTER TABLE descriptors SET (toast_tuple_target = 8160);

CREATE TABLE list_faces (
    list_id   uuid NOT NULL REFERENCES lists ON DELETE CASCADE,
    face_id   uuid NOT NULL REFERENCES faces ON DELETE CASCADE,
    link_seq  bigint NOT NULL,
    PRIMARY KEY (list_id, face_id)
);
CREATE INDEX list_faces_face ON list_faces (face_id);

-- Append-only change log per list. op: 1 attach, 2 detach, 3 descriptor update.
-- No foreign keys: the log outlives the faces it mentions.
CREATE TABLE list_changes (
    list_id  uuid NOT NULL REFERENCES lists ON DELETE CASCADE,
    seq      bigint NOT NULL,
    op       smallint NOT NULL,
    face_id  uuid NOT NULL,
    time     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (list_id, seq)
);
