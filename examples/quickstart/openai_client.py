"""Calls tollgate with the official `openai` Python SDK: chat, a stream, embeddings, models.

Usage (gateway running on the demo policy directory, see README):
    TOLLGATE_API_KEY=tg_... python3 examples/quickstart/openai_client.py
"""

import os

from openai import OpenAI

client = OpenAI(
    api_key=os.environ["TOLLGATE_API_KEY"],
    base_url=os.environ.get("TOLLGATE_BASE_URL", "http://127.0.0.1:8080/v1"),
)

reply = client.chat.completions.create(
    model="demo-chat",
    messages=[{"role": "user", "content": "Explain budget enforcement."}],
    max_tokens=200,
)
print("chat:", reply.choices[0].message.content)
print("usage:", reply.usage.prompt_tokens, "in /", reply.usage.completion_tokens, "out")

stream = client.chat.completions.create(
    model="demo-chat",
    messages=[{"role": "user", "content": "Stream this, please."}],
    stream=True,
    stream_options={"include_usage": True},
)
parts = []
for chunk in stream:
    if chunk.choices and chunk.choices[0].delta.content:
        parts.append(chunk.choices[0].delta.content)
    if chunk.usage:
        print("stream usage:", chunk.usage.total_tokens, "tokens")
print("stream:", "".join(parts))

embedding = client.embeddings.create(model="demo-embed", input="tollgate")
print("embedding dimensions:", len(embedding.data[0].embedding))

print("models:", ", ".join(m.id for m in client.models.list()))
