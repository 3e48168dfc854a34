"""Calls tollgate with the official `anthropic` Python SDK (2.x): a message, a stream, a token count.

The SDK's base URL is the gateway root (it appends /v1/messages); the virtual key goes where the
Anthropic key would (the SDK sends it as `Authorization: Bearer`, curl users as `x-api-key`).

Usage (gateway running on the demo policy directory, see README):
    TOLLGATE_API_KEY=tg_... python3 examples/quickstart/anthropic_client.py
"""

import os

import anthropic

client = anthropic.Anthropic(
    api_key=os.environ["TOLLGATE_API_KEY"],
    base_url=os.environ.get("TOLLGATE_BASE_URL", "http://127.0.0.1:8080"),
)

message = client.messages.create(
    model="demo-claude",
    max_tokens=200,
    system="You are terse.",
    messages=[{"role": "user", "content": "Explain budget enforcement."}],
)
print("message:", message.content[0].text)
print("usage:", message.usage.input_tokens, "in /", message.usage.output_tokens, "out")

with client.messages.stream(
    model="demo-claude",
    max_tokens=200,
    messages=[{"role": "user", "content": "Stream this, please."}],
) as stream:
    text = "".join(stream.text_stream)
    final = stream.get_final_message()
print("stream:", text)
print("stream stop:", final.stop_reason)

count = client.messages.count_tokens(
    model="demo-claude", messages=[{"role": "user", "content": "How many tokens?"}]
)
print("count:", count.input_tokens)
