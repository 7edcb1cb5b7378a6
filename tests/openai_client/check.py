"""Drives colloquy's OpenAI-compatible API with OpenAI's official Python client, unchanged:
only the base URL and the key differ. Prints one JSON object of what it saw; the Rust test
(tests/openai_api.rs) asserts on it.

Environment: OPENAI_BASE_URL, OPENAI_API_KEY, CHAT_MODEL, EMBEDDING_MODEL.
"""
import json
import math
import os

import openai

client = openai.OpenAI(max_retries=0, timeout=60)
chat_model = os.environ["CHAT_MODEL"]
embedding_model = os.environ["EMBEDDING_MODEL"]
seen = {"version": openai.__version__}

seen["models"] = sorted(m.id for m in client.models.list())
seen["model"] = client.models.retrieve(chat_model).id

# A whole answer.
completion = client.chat.completions.create(
    model=chat_model,
    messages=[
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Say hello to colloquy."},
    ],
    max_tokens=20,
    temperature=0.1,
)
seen["completion"] = {
    "id": completion.id,
    "object": completion.object,
    "model": completion.model,
    "content": completion.choices[0].message.content,
    "role": completion.choices[0].message.role,
    "finish_reason": completion.choices[0].finish_reason,
    "usage": completion.usage.model_dump(include={"prompt_tokens", "completion_tokens", "total_tokens"}),
}

# Streamed, with usage in a last chunk.
stream = client.chat.completions.create(
    model=chat_model,
    messages=[{"role": "user", "content": "Stream it, please."}],
    stream=True,
    stream_options={"include_usage": True},
)
text, finish, usage, chunks = "", None, None, 0
for chunk in stream:
    chunks += 1
    if chunk.choices:
        text += chunk.choices[0].delta.content or ""
        finish = chunk.choices[0].finish_reason or finish
    if chunk.usage is not None:
        usage = chunk.usage.model_dump(include={"prompt_tokens", "completion_tokens", "total_tokens"})
seen["stream"] = {"content": text, "finish_reason": finish, "usage": usage, "chunks": chunks}

# Embeddings (the client asks for base64 and decodes it).
vectors = [e.embedding for e in client.embeddings.create(model=embedding_model, input=["a cat sits on the mat", "a kitten rests on the rug", "quarterly revenue grew"]).data]
cosine = lambda a, b: sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))
seen["embeddings"] = {"count": len(vectors), "dimensions": len(vectors[0]), "similar": cosine(vectors[0], vectors[1]), "unrelated": cosine(vectors[0], vectors[2])}

# Errors come back as the client's own exceptions.
errors = {}
try:
    client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "Hi"}])
except openai.NotFoundError as e:
    errors["unknown_model"] = [e.status_code, e.code]
try:
    client.chat.completions.create(model=chat_model, messages=[{"role": "user", "content": "Hi"}], n=2)
except openai.BadRequestError as e:
    errors["n"] = [e.status_code, e.param]
try:
    openai.OpenAI(api_key="ck_" + "0" * 64, max_retries=0).models.list()
except openai.AuthenticationError as e:
    errors["bad_key"] = [e.status_code, e.code]
seen["errors"] = errors

print(json.dumps(seen))
