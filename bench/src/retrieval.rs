//! `colloquy-bench --retrieval`: how well and how fast the knowledge base finds passages.
//!
//! 1. Ingest: the corpus of `bench/retrieval/corpus` (SOURCES.md skipped) becomes knowledge
//!    documents of one owner through the production code: each file is extracted as Markdown,
//!    recorded with `Commands::create_document` (a text document), and its `DocumentCreated`
//!    event is handed to the ingest worker's `ingest::handle`, which chunks it with the
//!    default chunk settings, embeds the chunks with the local all-MiniLM-L6-v2, writes the
//!    version to the chunk index and records it indexed. The knowledge projection's own code
//!    (`apply_batch`) then writes `rm_knowledge_documents`, which search joins. Printed:
//!    chunks/s (the whole ingest) and embeddings/s (time inside the embedder).
//! 2. Quality: every question of `questions.json` in text, vector and hybrid mode, judged by
//!    the relevance rule of `bench/retrieval/README.md`: recall@5 and MRR per mode with k = 5,
//!    and with k = 10 (the README's MRR looks at the top 10), per question kind too; the
//!    questions hybrid search misses.
//! 3. Latency: the same owner's index grows past `--retrieval-chunks` live chunks, through
//!    the same ingest path, with copies of the corpus whose chunk vectors are the corpus's
//!    own with a small deterministic perturbation (`--retrieval-growth copies`, the default:
//!    about a minute), or with documents made of the corpus's paragraphs in shuffled orders,
//!    embedded for real (`shuffled`: new texts, but MiniLM embeds about 7 chunks/s on two
//!    cores, so 10,000 chunks take about 25 minutes). Then the questions are asked over and
//!    over (`--retrieval-searches` per mode, k = 5):
//!    p50/p99 of the SQL search per mode, and of the query embedding separately. EXPLAIN
//!    shows the vector ranking's plan, and the HNSW index's scan counter confirms that the
//!    searches used it.
//!
//! It prints figures; it fails only when it cannot run.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use colloquy_commands::ingest::{self, IngestDeps};
use colloquy_commands::knowledge::CreateDocument;
use colloquy_commands::{Caller, CommandSettings, Commands};
use colloquy_domain::knowledge::{DocumentSource, DocumentStatus};
use colloquy_domain::KnowledgeDocument;
use colloquy_extract::{ChunkSettings, Format, Limits};
use colloquy_infra::event_store;
use colloquy_infra::file_storage::FileStorage;
use colloquy_infra::knowledge_index::{self, EmbeddingSpace, SearchMode, SearchQuery};
use colloquy_infra::metrics::Metrics;
use colloquy_infra::settings::{LocalStorageSettings, StorageBackend, StorageSettings};
use colloquy_infra::{postgres, telemetry, Settings};
use colloquy_projections::knowledge::KnowledgeProjection;
use colloquy_projections::projection::apply_batch;
use colloquy_projections::Projection;
use colloquy_providers::{Embedder, ProviderError};
use cqrs_es::Aggregate;
use serde::Deserialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::{percentile, Args};

/// The corpus file that lists the sources; not a document.
const SOURCES: &str = "SOURCES.md";
/// Passages asked for: the assistant's default (`knowledge.retrieval.passages`).
const K: usize = 5;
/// The README's MRR looks this deep.
const K_DEEP: usize = 10;
const MODES: [SearchMode; 3] = [SearchMode::Text, SearchMode::Vector, SearchMode::Hybrid];
/// The HNSW index of 384-dimension vectors (migrations/20261129000090_knowledge.sql).
const HNSW_INDEX: &str = "knowledge_chunks_hnsw_384";
/// Largest change to one value of a reused vector (before it is normalised again): the
/// perturbed vector's cosine to the original is about 0.994 at 384 dimensions.
const PERTURBATION: f32 = 0.01;

/// How the index grows to `--retrieval-chunks` for the latency phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Growth {
    /// Copies of the corpus documents; their chunk vectors are the corpus's, perturbed.
    Copies,
    /// Documents of the corpus's paragraphs in shuffled orders, embedded for real.
    Shuffled,
}

/// One entry of `questions.json`.
#[derive(Debug, Clone, Deserialize)]
struct Question {
    id: String,
    kind: String,
    question: String,
    document: String,
    answer: String,
}

/// A corpus document: its file name and extracted text.
struct CorpusDoc {
    name: String,
    text: String,
}

/// Runs the three phases on the fresh database `db_url` (created and dropped by the caller).
pub async fn run(args: &Args, tag: &str, db_url: &str) -> anyhow::Result<()> {
    let data =
        args.retrieval_data.clone().unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("retrieval"));
    let corpus = load_corpus(&data.join("corpus"))?;
    let questions: Vec<Question> =
        serde_json::from_str(&std::fs::read_to_string(data.join("questions.json")).context("reading questions.json")?)
            .context("parsing questions.json")?;
    if corpus.is_empty() || questions.is_empty() {
        bail!("no corpus or no questions in {}", data.display());
    }

    let mut settings = Settings::default();
    settings.database.url = db_url.to_string();
    settings.log.filter = "warn".into();
    settings.assistant.local.models_dir = models_dir(args);
    telemetry::init(&settings.log);
    postgres::prepare(&settings.database).await.context("migrating the bench database")?;
    let pool = postgres::connect(&settings.database).await.context("connecting the bench database")?;

    let files = std::env::temp_dir().join(format!("colloquy-bench-{tag}"));
    let outcome = measure(args, &settings, &pool, &files, corpus, questions).await;
    pool.close().await;
    let _ = std::fs::remove_dir_all(&files);
    outcome
}

/// `--models-dir`, else `$COLLOQUY_MODELS_DIR`, else `$COLLOQUY_STATE_DIR/models`, else the
/// workspace's `.colloquy/models` (where `scripts/models.sh` puts them).
fn models_dir(args: &Args) -> PathBuf {
    if let Some(dir) = &args.models_dir {
        return dir.clone();
    }
    if let Some(state) = std::env::var_os("COLLOQUY_STATE_DIR") {
        return PathBuf::from(state).join("models");
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.colloquy/models")
}

fn load_corpus(dir: &Path) -> anyhow::Result<Vec<CorpusDoc>> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(Result::ok)
        .filter(|e| e.path().is_file())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| name != SOURCES && name.ends_with(".md"))
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let bytes = std::fs::read(dir.join(&name)).with_context(|| format!("reading {name}"))?;
            // Extracted as an uploaded Markdown file is.
            let text = colloquy_extract::extract(Format::Markdown, &bytes, &Limits::default())
                .with_context(|| format!("extracting {name}"))?
                .text;
            Ok(CorpusDoc { name, text })
        })
        .collect()
}

async fn measure(
    args: &Args,
    settings: &Settings,
    pool: &PgPool,
    files: &Path,
    corpus: Vec<CorpusDoc>,
    questions: Vec<Question>,
) -> anyhow::Result<()> {
    eprintln!("[bench] loading the local embedder from {}", settings.assistant.local.models_dir.display());
    let embedder = Arc::new(Timed::new(colloquy::runtime::embedder(settings).await?));
    let space = EmbeddingSpace { model: embedder.model().to_string(), dimension: embedder.dimension() };
    let storage = StorageSettings {
        backend: StorageBackend::Local,
        local: LocalStorageSettings { root: files.to_path_buf() },
        ..StorageSettings::default()
    };
    let chunking = &settings.knowledge.chunking;
    let deps = IngestDeps {
        commands: Arc::new(Commands::new(pool.clone(), Metrics::new(), CommandSettings::default())),
        pool: pool.clone(),
        storage: FileStorage::from_settings(&storage)?,
        embedder: embedder.clone(),
        chunking: ChunkSettings { max_tokens: chunking.max_tokens, overlap_tokens: chunking.overlap_tokens },
        limits: Limits::default(),
        max_file_bytes: settings.knowledge.uploads.max_bytes,
    };
    let owner = Uuid::new_v4();
    let mut out = std::io::stdout().lock();
    writeln!(out, "\n=== colloquy-bench --retrieval ===")?;
    writeln!(
        out,
        "embedder {} ({} dimensions, batch {}); chunking {}",
        space.model,
        space.dimension,
        settings.knowledge.embedder.batch_size,
        deps.chunking.describe()
    )?;

    // 1. The corpus.
    eprintln!("[bench] ingesting {} corpus documents", corpus.len());
    let docs: Vec<(Uuid, String, String)> =
        corpus.iter().map(|d| (Uuid::new_v4(), d.name.clone(), d.text.clone())).collect();
    let ingested = ingest_all(&deps, &embedder, owner, &docs).await?;
    writeln!(out, "ingest, corpus: {}", ingested.describe())?;
    let file_of: HashMap<Uuid, String> = docs.iter().map(|(id, name, _)| (*id, name.clone())).collect();
    let id_of: HashMap<&str, Uuid> = docs.iter().map(|(id, name, _)| (name.as_str(), *id)).collect();

    // 2. Quality.
    let judges: Vec<Judge> = questions.iter().map(|q| Judge::new(&q.answer)).collect();
    let mut unfindable = Vec::new();
    for (q, judge) in questions.iter().zip(&judges) {
        let document = *id_of.get(q.document.as_str()).with_context(|| format!("{}: unknown document", q.id))?;
        let chunks = knowledge_index::live_chunks(pool, owner, document).await?;
        if !chunks.iter().any(|(_, _, text)| judge.relevant(text)) {
            unfindable.push(q.id.clone());
        }
    }
    eprintln!("[bench] asking {} questions in 3 modes", questions.len());
    let mut ranks: Ranks = HashMap::new();
    let mut nothing: HashMap<&'static str, usize> = HashMap::new();
    let mut foreign = 0usize;
    for (q, judge) in questions.iter().zip(&judges) {
        let vector = embed_one(embedder.inner(), &q.question).await?;
        for mode in MODES {
            for k in [K, K_DEEP] {
                let query = search_query(owner, &q.question, &vector, &space, k, mode);
                let passages = knowledge_index::search(pool, &query).await?;
                if passages.is_empty() && k == K {
                    *nothing.entry(mode_name(mode)).or_default() += 1;
                }
                let hit = passages.iter().position(|p| judge.relevant(&p.content));
                if let Some(i) = hit {
                    if file_of.get(&passages[i].document_id) != Some(&q.document) {
                        foreign += 1;
                    }
                }
                ranks.entry((mode_name(mode), k)).or_default().push(hit.map(|i| i + 1));
            }
        }
    }
    print_quality(&mut out, &questions, &ranks, &nothing, &unfindable, foreign)?;

    // 3. Latency over a grown index.
    let target = args.retrieval_chunks as u64;
    let growth_embedder = match args.retrieval_growth {
        Growth::Copies => {
            let reuse = Reuse::new(corpus_vectors(pool, owner).await?, embedder.inner().clone());
            Arc::new(Timed::new(Arc::new(reuse)))
        }
        Growth::Shuffled => embedder.clone(),
    };
    let growth_deps = IngestDeps { embedder: growth_embedder.clone(), ..deps.clone() };
    eprintln!(
        "[bench] growing the index from {} to at least {target} chunks ({:?})",
        ingested.chunks, args.retrieval_growth
    );
    let mut grown = Ingested::default();
    // Batches until the target is reached: a shuffled document's chunk count is only known
    // once it is chunked.
    while ingested.chunks + grown.chunks < target {
        let missing = target - ingested.chunks - grown.chunks;
        let batch = match args.retrieval_growth {
            Growth::Copies => corpus_copies(&docs, ingested.chunks, missing, grown.documents),
            Growth::Shuffled => {
                let per_document = match grown.documents {
                    0 => ingested.chunks,
                    n => grown.chunks / n as u64,
                };
                let count = missing.div_ceil(per_document.max(1)) as usize;
                shuffled_documents(&corpus, grown.documents, count)
            }
        };
        grown.absorb(ingest_all(&growth_deps, &growth_embedder, owner, &batch).await?);
    }
    let how = match args.retrieval_growth {
        Growth::Copies => "copies of the corpus, vectors reused and perturbed, not embedded",
        Growth::Shuffled => "shuffled corpus paragraphs, embedded",
    };
    writeln!(out, "ingest, growth to {} documents ({how}): {}", docs.len() + grown.documents, grown.describe())?;
    let live: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM knowledge_chunks c
           JOIN knowledge_index ki ON ki.document_id = c.document_id AND ki.live_version = c.doc_version
          WHERE c.owner_id = $1 AND ki.deleted_at IS NULL",
    )
    .bind(owner)
    .fetch_one(pool)
    .await?;
    // What autovacuum's analyze would have done on a live system by now.
    sqlx::query("ANALYZE knowledge_chunks, knowledge_index, rm_knowledge_documents").execute(pool).await?;
    print_latency(&mut out, args, pool, embedder.inner(), &space, owner, &questions, live).await?;
    Ok(())
}

fn search_query<'a>(
    owner: Uuid,
    text: &'a str,
    vector: &'a [f32],
    space: &'a EmbeddingSpace,
    k: usize,
    mode: SearchMode,
) -> SearchQuery<'a> {
    let embedding = (mode != SearchMode::Text).then_some(vector);
    SearchQuery { owner_id: owner, text, embedding, space, k, tags: &[], mode }
}

async fn embed_one(embedder: &Arc<dyn Embedder>, text: &str) -> anyhow::Result<Vec<f32>> {
    embedder.embed(&[text.to_string()]).await?.pop().context("the embedder returned no vector")
}

// ---------------------------------------------------------------------------------------
// Ingest
// ---------------------------------------------------------------------------------------

/// What one ingest phase did and took.
#[derive(Default)]
struct Ingested {
    documents: usize,
    chunks: u64,
    wall: Duration,
    embedded: u64,
    embedding: Duration,
    projection: Duration,
}

impl Ingested {
    fn absorb(&mut self, other: Ingested) {
        self.documents += other.documents;
        self.chunks += other.chunks;
        self.wall += other.wall;
        self.embedded += other.embedded;
        self.embedding += other.embedding;
        self.projection += other.projection;
    }

    fn describe(&self) -> String {
        let per_sec = |n: u64, d: Duration| n as f64 / d.as_secs_f64().max(1e-9);
        format!(
            "{} documents, {} chunks in {:.1} s: {:.1} chunks/s; {} embeddings in {:.1} s inside the embedder: {:.1} embeddings/s ({:.0}% of the ingest time); read model {:.2} s",
            self.documents,
            self.chunks,
            self.wall.as_secs_f64(),
            per_sec(self.chunks, self.wall),
            self.embedded,
            self.embedding.as_secs_f64(),
            per_sec(self.embedded, self.embedding),
            100.0 * self.embedding.as_secs_f64() / self.wall.as_secs_f64().max(1e-9),
            self.projection.as_secs_f64()
        )
    }
}

/// Records each document as a text document, hands its `DocumentCreated` to the ingest
/// worker's `handle` (one event at a time, as the worker does), then applies its events to
/// the knowledge read model with the projection's own code.
async fn ingest_all(
    deps: &IngestDeps,
    embedder: &Timed,
    owner: Uuid,
    docs: &[(Uuid, String, String)],
) -> anyhow::Result<Ingested> {
    let caller = Caller::user(owner, "bench-retrieval".into(), "bench");
    let (embedded_before, embedding_before) = embedder.totals();
    let started = Instant::now();
    let mut chunks = 0u64;
    for (id, title, text) in docs {
        let input = CreateDocument {
            id: Some(*id),
            title: title.clone(),
            tags: Vec::new(),
            category: None,
            source: DocumentSource::Text { text: text.clone() },
        };
        deps.commands.create_document(&caller, input).await.map_err(|e| anyhow!("creating {title}: {e:?}"))?;
        let events = read_events(&deps.pool, *id).await?;
        let created = events.first().context("no DocumentCreated")?;
        ingest::handle(deps, created).await.with_context(|| format!("ingesting {title}"))?;
        let (document, _) = deps.commands.document_state(*id).await.map_err(|e| anyhow!("{title}: {e:?}"))?;
        if document.status != DocumentStatus::Ready {
            bail!("{title} was not indexed: {:?}", document.status);
        }
        let indexed = read_events(&deps.pool, *id).await?;
        chunks += indexed
            .iter()
            .find(|e| e.event_type == "DocumentIndexed")
            .and_then(|e| e.data["chunks"].as_u64())
            .context("no DocumentIndexed")?;
    }
    let wall = started.elapsed();
    let (embedded_after, embedding_after) = embedder.totals();

    let started = Instant::now();
    let projection = KnowledgeProjection;
    for (id, title, _) in docs {
        let events = read_events(&deps.pool, *id).await?;
        let mut tx = deps.pool.begin().await?;
        apply_batch(&mut tx, &projection, projection.name(), projection.table(), &events).await?;
        tx.commit().await?;
        let status: Option<String> =
            sqlx::query_scalar("SELECT status FROM rm_knowledge_documents WHERE document_id = $1 AND owner_id = $2")
                .bind(id)
                .bind(owner)
                .fetch_optional(&deps.pool)
                .await?;
        if status.as_deref() != Some(colloquy_projections::knowledge::status::READY) {
            bail!("{title}: the read model says {status:?}, not ready");
        }
    }
    Ok(Ingested {
        documents: docs.len(),
        chunks,
        wall,
        embedded: embedded_after - embedded_before,
        embedding: embedding_after.saturating_sub(embedding_before),
        projection: started.elapsed(),
    })
}

async fn read_events(pool: &PgPool, id: Uuid) -> anyhow::Result<Vec<event_store::StoredEvent>> {
    Ok(event_store::read_aggregate(pool, KnowledgeDocument::TYPE, &id.to_string(), 0, None).await?)
}

/// Whole copies of the corpus (new ids, titles marked as copies) adding at least `missing`
/// chunks: chunking is deterministic, so each copy adds exactly the corpus's `per_copy`.
/// `made`: documents made before, so that titles stay distinct.
fn corpus_copies(
    docs: &[(Uuid, String, String)],
    per_copy: u64,
    missing: u64,
    made: usize,
) -> Vec<(Uuid, String, String)> {
    let first = made / docs.len().max(1) + 1;
    let copies = missing.div_ceil(per_copy.max(1)) as usize;
    (first..first + copies)
        .flat_map(|copy| {
            docs.iter().map(move |(_, name, text)| (Uuid::new_v4(), format!("{name}, copy {copy}"), text.clone()))
        })
        .collect()
}

/// `count` documents made of all the corpus's paragraphs, each in its own shuffled order (so
/// their chunks are new texts, mostly mixing topics); `made` were made before.
fn shuffled_documents(corpus: &[CorpusDoc], made: usize, count: usize) -> Vec<(Uuid, String, String)> {
    let paragraphs: Vec<&str> =
        corpus.iter().flat_map(|d| d.text.split("\n\n")).map(str::trim).filter(|p| !p.is_empty()).collect();
    (made..made + count)
        .map(|i| {
            let mut order: Vec<&str> = paragraphs.clone();
            shuffle(&mut order, i as u64 + 1);
            (Uuid::new_v4(), format!("filler {:04}", i + 1), order.join("\n\n"))
        })
        .collect()
}

/// splitmix64: a deterministic stream of well-mixed numbers from `state`.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Fisher–Yates: the same seed always gives the same order.
fn shuffle<T>(items: &mut [T], seed: u64) {
    let mut state = seed;
    for i in (1..items.len()).rev() {
        let j = (splitmix(&mut state) % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}

/// `base` with every value moved by up to ±[`PERTURBATION`] (deterministic in `seed`), then
/// normalised again, as the model's vectors are.
fn perturb(base: &[f32], seed: u64) -> Vec<f32> {
    let mut state = seed;
    let moved: Vec<f32> = base
        .iter()
        .map(|x| {
            let unit = (splitmix(&mut state) >> 40) as f32 / (1u64 << 24) as f32; // [0, 1)
            x + PERTURBATION * (2.0 * unit - 1.0)
        })
        .collect();
    let norm = moved.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    moved.iter().map(|x| x / norm).collect()
}

/// The corpus's chunk texts and their vectors, as the index holds them.
async fn corpus_vectors(pool: &PgPool, owner: Uuid) -> anyhow::Result<HashMap<String, Vec<f32>>> {
    let rows: Vec<(String, pgvector::Vector)> =
        sqlx::query_as("SELECT content, embedding FROM knowledge_chunks WHERE owner_id = $1")
            .bind(owner)
            .fetch_all(pool)
            .await?;
    Ok(rows.into_iter().map(|(text, vector)| (text, vector.to_vec())).collect())
}

/// An embedder for the copies: a text the corpus has gets the corpus's vector, perturbed
/// (a different perturbation each time, so copies are near, not exact, duplicates); any
/// other text is embedded for real.
struct Reuse {
    known: HashMap<String, Vec<f32>>,
    fallback: Arc<dyn Embedder>,
    calls: AtomicU64,
}

impl Reuse {
    fn new(known: HashMap<String, Vec<f32>>, fallback: Arc<dyn Embedder>) -> Self {
        Self { known, fallback, calls: AtomicU64::new(0) }
    }
}

#[async_trait::async_trait]
impl Embedder for Reuse {
    fn model(&self) -> &str {
        self.fallback.model()
    }

    fn dimension(&self) -> usize {
        self.fallback.dimension()
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, ProviderError> {
        let call = self.calls.fetch_add(1, Ordering::Relaxed);
        let unknown: Vec<String> = texts.iter().filter(|t| !self.known.contains_key(*t)).cloned().collect();
        let mut fresh = self.fallback.embed(&unknown).await?.into_iter();
        Ok(texts
            .iter()
            .enumerate()
            .map(|(i, text)| match self.known.get(text) {
                Some(base) => perturb(base, (call << 20) ^ i as u64),
                // The fallback answers one vector per text; an empty one would be refused
                // by the index's dimension check rather than stored.
                None => fresh.next().unwrap_or_default(),
            })
            .collect())
    }
}

/// The ingest worker's embedder with a stopwatch: texts embedded and time spent inside.
struct Timed {
    inner: Arc<dyn Embedder>,
    texts: AtomicU64,
    nanos: AtomicU64,
}

impl Timed {
    fn new(inner: Arc<dyn Embedder>) -> Self {
        Self { inner, texts: AtomicU64::new(0), nanos: AtomicU64::new(0) }
    }

    fn inner(&self) -> &Arc<dyn Embedder> {
        &self.inner
    }

    fn totals(&self) -> (u64, Duration) {
        (self.texts.load(Ordering::Relaxed), Duration::from_nanos(self.nanos.load(Ordering::Relaxed)))
    }
}

#[async_trait::async_trait]
impl Embedder for Timed {
    fn model(&self) -> &str {
        self.inner.model()
    }

    fn dimension(&self) -> usize {
        self.inner.dimension()
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, ProviderError> {
        let started = Instant::now();
        let vectors = self.inner.embed(texts).await;
        self.nanos.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        self.texts.fetch_add(texts.len() as u64, Ordering::Relaxed);
        vectors
    }
}

// ---------------------------------------------------------------------------------------
// Relevance (bench/retrieval/README.md, "When a retrieved chunk is relevant")
// ---------------------------------------------------------------------------------------

/// Lower-cased words: maximal runs of alphanumeric characters (`check.py`'s `words`).
fn words(text: &str) -> Vec<String> {
    text.to_lowercase().split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_string).collect()
}

/// Words of an n-word answer a chunk must hold in order: ⌈0.6 · n⌉.
fn min_run(n: usize) -> usize {
    (3 * n).div_ceil(5)
}

/// The longest run of consecutive words common to `a` and `b`.
fn longest_common_run(a: &[String], b: &[String]) -> usize {
    let mut best = 0;
    let mut previous = vec![0usize; b.len() + 1];
    for x in a {
        let mut current = vec![0usize; b.len() + 1];
        for (j, y) in b.iter().enumerate() {
            if x == y {
                current[j + 1] = previous[j] + 1;
                best = best.max(current[j + 1]);
            }
        }
        previous = current;
    }
    best
}

/// Judges chunks for one question's answer (`check.py`'s `is_relevant`).
struct Judge {
    answer: Vec<String>,
    needed: usize,
}

impl Judge {
    fn new(answer: &str) -> Self {
        let answer = words(answer);
        let needed = min_run(answer.len());
        Self { answer, needed }
    }

    fn relevant(&self, chunk: &str) -> bool {
        longest_common_run(&self.answer, &words(chunk)) >= self.needed
    }
}

// ---------------------------------------------------------------------------------------
// Reports
// ---------------------------------------------------------------------------------------

/// recall@5 and MRR of `ranks` (rank of the first relevant passage, from 1) over the
/// questions selected by `keep`.
fn scores(ranks: &[Option<usize>], keep: impl Fn(usize) -> bool) -> (f64, f64, usize) {
    let chosen: Vec<Option<usize>> = ranks.iter().enumerate().filter(|(i, _)| keep(*i)).map(|(_, r)| *r).collect();
    let n = chosen.len().max(1) as f64;
    let recall = chosen.iter().filter(|r| r.is_some_and(|r| r <= K)).count() as f64 / n;
    let mrr = chosen.iter().map(|r| r.map_or(0.0, |r| 1.0 / r as f64)).sum::<f64>() / n;
    (recall, mrr, chosen.len())
}

/// Per (mode, k): the rank of each question's first relevant passage (from 1), if any.
type Ranks = HashMap<(&'static str, usize), Vec<Option<usize>>>;

fn mode_name(mode: SearchMode) -> &'static str {
    match mode {
        SearchMode::Text => "text",
        SearchMode::Vector => "vector",
        SearchMode::Hybrid => "hybrid",
    }
}

fn print_quality(
    out: &mut impl Write,
    questions: &[Question],
    ranks: &Ranks,
    nothing: &HashMap<&'static str, usize>,
    unfindable: &[String],
    foreign: usize,
) -> anyhow::Result<()> {
    let kinds = ["paraphrase", "keyword"];
    let count = |kind: &str| questions.iter().filter(|q| q.kind == kind).count();
    writeln!(
        out,
        "quality: {} questions ({} paraphrase, {} keyword); answers findable in the index (a relevant chunk exists): {}/{}{}",
        questions.len(),
        count("paraphrase"),
        count("keyword"),
        questions.len() - unfindable.len(),
        questions.len(),
        if unfindable.is_empty() { String::new() } else { format!(" (not: {})", unfindable.join(", ")) }
    )?;
    writeln!(
        out,
        "  mode    k=5: recall@5  MRR@5  | k=10: recall@10  MRR@10 | recall@5 (k=5) paraphrase / keyword | no passage at all"
    )?;
    let empty = Vec::new();
    for mode in MODES {
        let shallow = ranks.get(&(mode_name(mode), K)).unwrap_or(&empty);
        let deep = ranks.get(&(mode_name(mode), K_DEEP)).unwrap_or(&empty);
        let (recall, mrr, _) = scores(shallow, |_| true);
        let (_, mrr_deep, n) = scores(deep, |_| true);
        let recall_deep = deep.iter().filter(|r| r.is_some()).count() as f64 / n.max(1) as f64;
        let [para, key] = kinds.map(|kind| scores(shallow, |i| questions[i].kind == kind).0);
        writeln!(
            out,
            "  {:<7}      {recall:.3}  {mrr:.3}  |       {recall_deep:.3}   {mrr_deep:.3}  |   {para:.3} / {key:.3}                | {}",
            mode_name(mode),
            nothing.get(mode_name(mode)).copied().unwrap_or(0)
        )?;
    }
    if foreign > 0 {
        writeln!(out, "  warning: {foreign} relevant passages came from another document than the question's")?;
    }
    let hybrid = ranks.get(&(mode_name(SearchMode::Hybrid), K)).unwrap_or(&empty);
    let rank_in = |mode: SearchMode, i: usize| {
        ranks.get(&(mode_name(mode), K_DEEP)).and_then(|r| r[i]).map_or("-".to_string(), |r| r.to_string())
    };
    let missed: Vec<usize> = (0..questions.len()).filter(|&i| hybrid.get(i).is_some_and(Option::is_none)).collect();
    writeln!(
        out,
        "  hybrid (k=5) misses {} of {} (rank of the first relevant passage in the top 10 of text / vector / hybrid):",
        missed.len(),
        questions.len()
    )?;
    for i in missed {
        let q = &questions[i];
        writeln!(
            out,
            "    {} {:<10} {} / {} / {}  {}",
            q.id,
            q.kind,
            rank_in(SearchMode::Text, i),
            rank_in(SearchMode::Vector, i),
            rank_in(SearchMode::Hybrid, i),
            q.question
        )?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn print_latency(
    out: &mut impl Write,
    args: &Args,
    pool: &PgPool,
    embedder: &Arc<dyn Embedder>,
    space: &EmbeddingSpace,
    owner: Uuid,
    questions: &[Question],
    live: i64,
) -> anyhow::Result<()> {
    let rounds = args.retrieval_searches.div_ceil(questions.len()).max(1);
    let index_scans_before = hnsw_scans(pool).await?;
    // One unmeasured pass: prepared statements, caches.
    for q in questions {
        let vector = embed_one(embedder, &q.question).await?;
        for mode in MODES {
            knowledge_index::search(pool, &search_query(owner, &q.question, &vector, space, K, mode)).await?;
        }
    }
    eprintln!("[bench] latency: {rounds} rounds of {} questions in 3 modes", questions.len());
    let mut embedding = Vec::new();
    let mut sql: HashMap<&'static str, Vec<Duration>> = HashMap::new();
    for round in 0..rounds {
        for (i, q) in questions.iter().enumerate() {
            let started = Instant::now();
            let vector = embed_one(embedder, &q.question).await?;
            embedding.push(started.elapsed());
            // Rotate the order of the modes, so none always runs first (or on warm pages).
            for m in 0..MODES.len() {
                let mode = MODES[(round + i + m) % MODES.len()];
                let started = Instant::now();
                knowledge_index::search(pool, &search_query(owner, &q.question, &vector, space, K, mode)).await?;
                sql.entry(mode_name(mode)).or_default().push(started.elapsed());
            }
        }
    }
    let ms = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64() * 1_000.0);
    writeln!(out, "latency over {live} live chunks of one owner (k={K}, one client, sequential):")?;
    for mode in MODES {
        let mut samples = sql.remove(mode_name(mode)).unwrap_or_default();
        let (p50, p99) = (percentile(&mut samples, 0.50), percentile(&mut samples, 0.99));
        writeln!(
            out,
            "  {:<7} SQL search  p50 {:6.2} ms  p99 {:6.2} ms  ({} searches)",
            mode_name(mode),
            ms(p50),
            ms(p99),
            samples.len()
        )?;
    }
    let (p50, p99) = (percentile(&mut embedding, 0.50), percentile(&mut embedding, 0.99));
    writeln!(
        out,
        "  query embedding     p50 {:6.2} ms  p99 {:6.2} ms  ({} questions embedded; vector and hybrid add it)",
        ms(p50),
        ms(p99),
        embedding.len()
    )?;

    let plan = explain_vector_ranking(pool, embedder, space, owner, &questions[0].question).await?;
    let used = plan.iter().find(|line| line.contains(HNSW_INDEX));
    match used {
        Some(line) => writeln!(out, "  EXPLAIN of the vector ranking: {}", line.trim())?,
        None => {
            writeln!(out, "  EXPLAIN of the vector ranking does NOT use {HNSW_INDEX}:\n    {}", plan.join("\n    "))?
        }
    }
    let scans = wait_for_hnsw_scans(pool, index_scans_before).await?;
    writeln!(
        out,
        "  {HNSW_INDEX}: {scans} index scans during the searches (pg_stat_user_indexes; vector and hybrid searches ran {})",
        2 * (rounds + 1) * questions.len()
    )?;
    Ok(())
}

/// `knowledge_index::search`'s own plan for a vector search of `question`.
async fn explain_vector_ranking(
    pool: &PgPool,
    embedder: &Arc<dyn Embedder>,
    space: &EmbeddingSpace,
    owner: Uuid,
    question: &str,
) -> anyhow::Result<Vec<String>> {
    let vector = embed_one(embedder, question).await?;
    let query = SearchQuery {
        owner_id: owner,
        text: question,
        embedding: Some(&vector),
        space,
        k: K,
        tags: &[],
        mode: SearchMode::Vector,
    };
    Ok(knowledge_index::explain(pool, &query, true).await?)
}

async fn hnsw_scans(pool: &PgPool) -> anyhow::Result<i64> {
    let scans: Option<i64> = sqlx::query_scalar("SELECT idx_scan FROM pg_stat_user_indexes WHERE indexrelname = $1")
        .bind(HNSW_INDEX)
        .fetch_optional(pool)
        .await?;
    Ok(scans.unwrap_or(0))
}

/// Index scans of the HNSW index since `before`. Backends report their statistics when
/// they go idle, at most once a second (PostgreSQL 15): poll for a few seconds.
async fn wait_for_hnsw_scans(pool: &PgPool, before: i64) -> anyhow::Result<i64> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let scans = hnsw_scans(pool).await? - before;
        if scans > 0 || Instant::now() > deadline {
            return Ok(scans);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rule's own examples, as `check.py` checks them.
    #[test]
    fn relevance_follows_the_readme() {
        let judge = Judge::new("one two three four five six seven eight nine ten");
        let cases = [
            ("x one two three four five six seven eight nine ten y", true),
            ("ONE, two; three four five six. Seven eight nine ten!", true),
            ("one two three four five six", true),
            ("five six seven eight nine ten", true),
            ("one two three four five", false),
            ("one two three x four five six", false),
            ("six five four three two one", false),
        ];
        for (chunk, expected) in cases {
            assert_eq!(judge.relevant(chunk), expected, "{chunk}");
        }
        assert_eq!((min_run(5), min_run(7), min_run(25)), (3, 5, 15));
        assert_eq!(
            words("max_slot_wal_keep_size **Ünïcode** 10:00"),
            ["max", "slot", "wal", "keep", "size", "ünïcode", "10", "00"]
        );
    }

    #[test]
    fn perturbed_vectors_are_unit_vectors_near_the_original() {
        let mut base: Vec<f32> = (0..384).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
        let norm = base.iter().map(|x| x * x).sum::<f32>().sqrt();
        base.iter_mut().for_each(|x| *x /= norm);
        let moved = perturb(&base, 42);
        assert_eq!(moved, perturb(&base, 42), "deterministic");
        assert_ne!(moved, perturb(&base, 43));
        let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
        assert!((dot(&moved, &moved) - 1.0).abs() < 1e-4);
        let cosine = dot(&moved, &base);
        assert!(cosine > 0.98 && cosine < 0.9999, "cosine {cosine}");
    }

    #[test]
    fn shuffles_are_deterministic_permutations() {
        let mut a: Vec<u32> = (0..50).collect();
        let mut b = a.clone();
        shuffle(&mut a, 7);
        shuffle(&mut b, 7);
        assert_eq!(a, b);
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
        let mut c: Vec<u32> = (0..50).collect();
        shuffle(&mut c, 8);
        assert_ne!(a, c);
    }
}
