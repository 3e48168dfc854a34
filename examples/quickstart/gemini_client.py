"""Calls tollgate with the official `google-genai` Python SDK (3.x): content, a stream, embeddings.

The SDK's base URL is the gateway root; it calls `/v1/models/{model}:generateContent` (or
`/v1beta/...` with `api_version="v1beta"`); `{model}` is the tollgate model name.

Usage (gateway running on the demo policy directory, see README):
    TOLLGATE_API_KEY=tg_... python3 examples/quickstart/gemini_client.py
"""

import os

from google import genai
from google.genai import types

client = genai.Client(
    api_key=os.environ["TOLLGATE_API_KEY"],
    http_options=types.HttpOptions(
        base_url=os.environ.get("TOLLGATE_BASE_URL", "http://127.0.0.1:8080")
    ),
)

reply = client.models.generate_content(
    model="demo-gemini", contents="Explain budget enforcement."
)
print("content:", reply.text)
print("usage:", reply.usage_metadata.prompt_token_count, "in /",
      reply.usage_metadata.candidates_token_count, "out")

parts = [
    chunk.text or ""
    for chunk in client.models.generate_content_stream(
        model="demo-gemini", contents="Stream this, please."
    )
]
print("stream:", "".join(parts))

embedding = client.models.embed_content(model="demo-gemini", contents="tollgate")
print("embedding dimensions:", len(embedding.embeddings[0].values))
