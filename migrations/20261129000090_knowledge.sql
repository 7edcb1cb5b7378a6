-- Files and the knowledge base: two read models (projections of the File and
-- KnowledgeDocument aggregates) and the chunk index the ingest worker writes.

-- One row per uploaded file (projection `files`).
CREATE TABLE rm_files (
    file_id       uuid        PRIMARY KEY,
    owner_id      uuid        NOT NULL,
    file_name     text        NOT NULL,
    media_type    text        NOT NULL,
    size_bytes    bigint      NOT NULL,
    sha256        text        NOT NULL,
    storage_key   text        NOT NULL,
    -- processing | ready | failed | deleted
    status        text        NOT NULL,
    text_length   bigint,
    pages         integer,
    chunks        integer,
    error_code    text,
    error_message text,
    version       bigint      NOT NULL,
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL
);
-- Keyset pages of a user's files, newest first.
CREATE INDEX rm_files_owner_page ON rm_files (owner_id, created_at DESC, file_id DESC) WHERE status <> 'deleted';

-- One row per knowledge document (projection `knowledge`).
CREATE TABLE rm_knowledge_documents (
    document_id         uuid        PRIMARY KEY,
    owner_id            uuid        NOT NULL,
    title               text        NOT NULL,
    tags                text[]      NOT NULL DEFAULT '{}',
    category            text,
    -- text | file
    source              text        NOT NULL,
    file_id             uuid,
    -- the current version (a text change makes a new one)
    doc_version         integer     NOT NULL,
    -- indexing | ready | failed | deleted (of the current version)
    status              text        NOT NULL,
    chunks              integer,
    chunking            text,
    embedding_model     text,
    embedding_dimension integer,
    error_code          text,
    error_message       text,
    version             bigint      NOT NULL,
    created_at          timestamptz NOT NULL,
    updated_at          timestamptz NOT NULL
);
CREATE INDEX rm_knowledge_documents_owner_page
    ON rm_knowledge_documents (owner_id, created_at DESC, document_id DESC) WHERE status <> 'deleted';
CREATE INDEX rm_knowledge_documents_tags ON rm_knowledge_documents USING gin (tags);

-- Which version of a document is searchable. Written by the ingest worker in the same
-- transaction as that version's chunks (so a half-written index is never searchable), and
-- by the delete use case at once (so a deleted document leaves search before any projector
-- catches up). Every search joins it.
CREATE TABLE knowledge_index (
    document_id  uuid        PRIMARY KEY,
    owner_id     uuid        NOT NULL,
    -- the version whose chunks are live (NULL: none yet)
    live_version integer,
    deleted_at   timestamptz,
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- The chunk index. The chunk id is a UUID v5 of (document, version, position): a retried
-- or redelivered ingest writes the same rows, never duplicates.
CREATE TABLE knowledge_chunks (
    chunk_id            uuid    PRIMARY KEY,
    document_id         uuid    NOT NULL REFERENCES knowledge_index (document_id) ON DELETE CASCADE,
    owner_id            uuid    NOT NULL,
    doc_version         integer NOT NULL,
    position            integer NOT NULL,
    content             text    NOT NULL,
    tsv                 tsvector GENERATED ALWAYS AS (to_tsvector('english', content)) STORED,
    -- the model and dimension are stored with every vector: a search compares only vectors
    -- of the configured model, and a changed embedder re-embeds through a rebuild
    embedding_model     text    NOT NULL,
    embedding_dimension integer NOT NULL,
    embedding           vector  NOT NULL,
    UNIQUE (document_id, doc_version, position),
    CHECK (vector_dims(embedding) = embedding_dimension)
);
CREATE INDEX knowledge_chunks_owner ON knowledge_chunks (owner_id);
CREATE INDEX knowledge_chunks_tsv ON knowledge_chunks USING gin (tsv);
-- HNSW needs a fixed dimension: one partial index per common embedding size (MiniLM 384,
-- 768, 1024, OpenAI text-embedding-3-small 1536). Other sizes are searched exactly (no
-- index), which is correct but slower; add an index like these for them.
CREATE INDEX knowledge_chunks_hnsw_384 ON knowledge_chunks
    USING hnsw ((embedding::vector(384)) vector_cosine_ops) WHERE embedding_dimension = 384;
CREATE INDEX knowledge_chunks_hnsw_768 ON knowledge_chunks
    USING hnsw ((embedding::vector(768)) vector_cosine_ops) WHERE embedding_dimension = 768;
CREATE INDEX knowledge_chunks_hnsw_1024 ON knowledge_chunks
    USING hnsw ((embedding::vector(1024)) vector_cosine_ops) WHERE embedding_dimension = 1024;
CREATE INDEX knowledge_chunks_hnsw_1536 ON knowledge_chunks
    USING hnsw ((embedding::vector(1536)) vector_cosine_ops) WHERE embedding_dimension = 1536;

-- Assistant messages carry the passages their prompt quoted.
ALTER TABLE rm_messages ADD COLUMN citations jsonb NOT NULL DEFAULT '[]';

-- Conversations say whether their replies are grounded (kind `knowledge` starts grounded).
ALTER TABLE rm_conversations ADD COLUMN grounded boolean NOT NULL DEFAULT false;
UPDATE rm_conversations SET grounded = (kind = 'knowledge');
