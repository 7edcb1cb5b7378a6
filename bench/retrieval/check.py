#!/usr/bin/env python3
"""Validate the retrieval-evaluation corpus and its questions (stdlib only).

Usage: python3 bench/retrieval/check.py

Checks questions.json against corpus/ and prints counts. Exits 0 when every
check passes, 1 otherwise. The functions `words`, `min_run` and `is_relevant`
are the reference implementation of the relevance rule in README.md; the
bench must judge retrieved chunks the same way.
"""

import json
import re
import sys
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
CORPUS_DIR = HERE / "corpus"
QUESTIONS = HERE / "questions.json"
SOURCES = "SOURCES.md"

KINDS = ("paraphrase", "keyword")
FIELDS = {"id", "kind", "question", "document", "answer"}
MIN_ANSWER_WORDS, MAX_ANSWER_WORDS = 5, 25
MIN_DOC_BYTES, MAX_DOC_BYTES = 1024, 8192
# Chunk sizes (characters) for the chunking diagnostic: small to large.
SIMULATED_CAPACITIES = (256, 512, 1000, 2000)

# Letters and digits of any script; everything else separates words. Matches
# Rust's `char::is_alphanumeric` for every character in this corpus.
WORD = re.compile(r"[^\W_]+")

# Words ignored when measuring how much a question shares with its answer.
STOPWORDS = frozenset(
    """a an and are as at be by can do does for from get how i if in is it its
    me my of on or should so than that the their them there they this to up
    what when where which who why will with you your i'm it's don't isn't
    what's""".split()
)


def words(text):
    """Lower-cased words of `text`: maximal runs of letters and digits."""
    return WORD.findall(text.lower())


def min_run(n):
    """Words of an n-word answer a chunk must hold in order: ceil(0.6 * n)."""
    return (3 * n + 4) // 5


def longest_common_run(a, b):
    """Length of the longest run of consecutive words common to `a` and `b`."""
    best = 0
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0] * (len(b) + 1)
        for j, y in enumerate(b, 1):
            if x == y:
                current[j] = previous[j - 1] + 1
                best = max(best, current[j])
        previous = current
    return best


def is_relevant(chunk_text, answer):
    """True when the chunk holds at least ceil(0.6 * n) of the answer's n
    words consecutively and in order (the whole answer counts, of course)."""
    answer_words = words(answer)
    return longest_common_run(answer_words, words(chunk_text)) >= min_run(len(answer_words))


def load_corpus(directory=CORPUS_DIR):
    """The corpus documents by file name, SOURCES.md excluded."""
    return {
        path.name: path.read_text(encoding="utf-8")
        for path in sorted(directory.iterdir())
        if path.is_file() and path.name != SOURCES
    }


def load_questions(path=QUESTIONS):
    """The question list as stored in questions.json."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def simulate_chunks(text, capacity):
    """Approximates a semantic splitter: paragraphs, then sentences, then
    words are split until each piece fits, then packed greedily."""

    def pieces(segment, level):
        if len(segment) <= capacity:
            return [segment]
        if level == 0:
            parts = re.split(r"\n\s*\n", segment)
        elif level == 1:
            parts = re.split(r"(?<=[.!?:;])\s+|\n", segment)
        elif level == 2:
            parts = segment.split()
        else:
            return [segment[i : i + capacity] for i in range(0, len(segment), capacity)]
        if len(parts) == 1:
            return pieces(segment, level + 1)
        return [p for part in parts if part.strip() for p in pieces(part.strip(), level + 1)]

    chunks, current = [], ""
    for piece in pieces(text.strip(), 0):
        candidate = f"{current} {piece}" if current else piece
        if len(candidate) <= capacity:
            current = candidate
        else:
            chunks.append(current)
            current = piece
    if current:
        chunks.append(current)
    return chunks


def check_relevance_rule():
    """The rule's own examples; a wrong edit to is_relevant fails here."""
    answer = "one two three four five six seven eight nine ten"
    cases = [
        ("x one two three four five six seven eight nine ten y", True),
        ("ONE, two; three four five six. Seven eight nine ten!", True),
        ("one two three four five six", True),  # 6 of 10 in order
        ("five six seven eight nine ten", True),
        ("one two three four five", False),  # 5 of 10
        ("one two three x four five six", False),  # broken run
        ("six five four three two one", False),  # wrong order
    ]
    errors = [f"is_relevant({c!r}) should be {e}" for c, e in cases if is_relevant(c, answer) != e]
    if min_run(5) != 3 or min_run(7) != 5 or min_run(25) != 15:
        errors.append("min_run is not ceil(0.6 * n)")
    return errors


def check_corpus(corpus, sources_text):
    errors = []
    if not 15 <= len(corpus) <= 30:
        errors.append(f"corpus has {len(corpus)} documents, expected 15-30")
    for name, text in corpus.items():
        size = len(text.encode("utf-8"))
        if not MIN_DOC_BYTES <= size <= MAX_DOC_BYTES:
            errors.append(f"{name}: {size} bytes, expected {MIN_DOC_BYTES}-{MAX_DOC_BYTES}")
        if f"`{name}`" not in sources_text:
            errors.append(f"{name}: not listed in {SOURCES}")
    return errors


def check_question(q, corpus, seen_ids):
    """Errors of one entry's shape, document and answer placement."""
    label = q.get("id", "?") if isinstance(q, dict) else "?"
    if not isinstance(q, dict) or set(q) != FIELDS:
        return [f"{label}: fields must be exactly {sorted(FIELDS)}"]
    if any(not isinstance(q[f], str) or not q[f].strip() for f in FIELDS):
        return [f"{label}: every field must be a non-empty string"]
    errors = []
    if not re.fullmatch(r"q\d{2,}", q["id"]):
        errors.append(f"{label}: id must look like q01")
    if q["id"] in seen_ids:
        errors.append(f"{label}: duplicate id")
    seen_ids.add(q["id"])
    if q["kind"] not in KINDS:
        errors.append(f"{label}: kind must be one of {KINDS}")
    document = corpus.get(q["document"])
    if document is None:
        return errors + [f"{label}: document {q['document']!r} is not in the corpus"]
    answer = q["answer"]
    n = len(words(answer))
    if not MIN_ANSWER_WORDS <= n <= MAX_ANSWER_WORDS:
        errors.append(f"{label}: answer has {n} words, expected {MIN_ANSWER_WORDS}-{MAX_ANSWER_WORDS}")
    count = document.count(answer)
    if count != 1:
        errors.append(f"{label}: answer occurs {count} times in {q['document']}, expected once")
    else:
        start = document.index(answer)
        end = start + len(answer)
        if (start > 0 and document[start - 1].isalnum()) or (
            end < len(document) and document[end].isalnum()
        ):
            errors.append(f"{label}: answer must start and end on word boundaries")
    return errors


def check_uniqueness(questions, corpus):
    """Every run of min_run(n) answer words must occur once in the whole
    corpus, so a chunk judged relevant can only come from the answer's own
    passage, whichever document the bench thinks the chunk belongs to."""
    errors = []
    doc_words = {name: words(text) for name, text in corpus.items()}
    grams_by_size = {}
    for q in questions:
        answer_words = words(q["answer"])
        k = min_run(len(answer_words))
        if k not in grams_by_size:
            grams = Counter()
            for ws in doc_words.values():
                grams.update(tuple(ws[i : i + k]) for i in range(len(ws) - k + 1))
            grams_by_size[k] = grams
        for i in range(len(answer_words) - k + 1):
            window = tuple(answer_words[i : i + k])
            if grams_by_size[k][window] != 1:
                errors.append(
                    f"{q['id']}: {' '.join(window)!r} occurs {grams_by_size[k][window]} times "
                    "in the corpus, so a partial match would be ambiguous"
                )
                break
    return errors


def overlap(question, answer):
    """Share of the question's content words that also appear in the answer."""
    content = {w for w in words(question) if w not in STOPWORDS}
    if not content:
        return 0.0
    return len(content & set(words(answer))) / len(content)


def report(questions, corpus):
    sizes = [len(t.encode("utf-8")) for t in corpus.values()]
    print(f"documents: {len(corpus)}, {sum(sizes)} bytes (smallest {min(sizes)}, largest {max(sizes)})")
    kinds = Counter(q["kind"] for q in questions)
    print(f"questions: {len(questions)} ({', '.join(f'{kinds[k]} {k}' for k in KINDS)})")
    lengths = [len(words(q["answer"])) for q in questions]
    print(f"answer words: min {min(lengths)}, mean {sum(lengths) / len(lengths):.1f}, max {max(lengths)}")
    for kind in KINDS:
        shares = [overlap(q["question"], q["answer"]) for q in questions if q["kind"] == kind]
        if shares:
            print(f"question words found in the answer ({kind}): mean {sum(shares) / len(shares):.2f}")
    per_doc = Counter(q["document"] for q in questions)
    print("questions per document:")
    for name in corpus:
        print(f"  {per_doc[name]:2d}  {name}")
    print("findable after simulated chunking (questions with a relevant chunk):")
    for capacity in SIMULATED_CAPACITIES:
        chunks = {name: simulate_chunks(text, capacity) for name, text in corpus.items()}
        missed = [
            q["id"]
            for q in questions
            if not any(is_relevant(c, q["answer"]) for c in chunks[q["document"]])
        ]
        total = sum(len(c) for c in chunks.values())
        note = f"; not findable: {', '.join(missed)}" if missed else ""
        print(f"  {capacity:5d} chars: {len(questions) - len(missed)}/{len(questions)} in {total} chunks{note}")


def warnings(questions, corpus):
    found = []
    per_doc = Counter(q["document"] for q in questions)
    found += [f"{name}: no question" for name in corpus if per_doc[name] == 0]
    found += [
        f"{q['id']}: paraphrase question shares {overlap(q['question'], q['answer']):.0%} of its words with the answer"
        for q in questions
        if q["kind"] == "paraphrase" and overlap(q["question"], q["answer"]) > 0.34
    ]
    return found


def main():
    corpus = load_corpus()
    sources_path = CORPUS_DIR / SOURCES
    sources_text = sources_path.read_text(encoding="utf-8") if sources_path.exists() else ""
    errors = check_relevance_rule()
    if not sources_text:
        errors.append(f"{SOURCES} is missing")
    errors += check_corpus(corpus, sources_text)
    questions = load_questions()
    if not isinstance(questions, list):
        errors.append("questions.json must hold a JSON array")
        questions = []
    seen_ids = set()
    for q in questions:
        errors += check_question(q, corpus, seen_ids)
    if len(questions) < 60:
        errors.append(f"{len(questions)} questions, expected at least 60")
    if errors:
        print("\n".join(f"error: {e}" for e in errors))
        return 1
    errors = check_uniqueness(questions, corpus)
    if errors:
        print("\n".join(f"error: {e}" for e in errors))
        return 1
    report(questions, corpus)
    for w in warnings(questions, corpus):
        print(f"warning: {w}")
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
