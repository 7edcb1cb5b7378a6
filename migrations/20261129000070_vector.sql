-- pgvector, for the knowledge base's chunk index (embeddings searched by cosine distance
-- through an HNSW index); its tables come with the migrations that use them. The extension
-- is part of the schema, so a fresh database gets it like any table, and IF NOT EXISTS lets
-- an administrator create it beforehand where the role that migrates may not (it is not a
-- trusted extension: creating it takes a superuser or the provider's equivalent role).
CREATE EXTENSION IF NOT EXISTS vector;
