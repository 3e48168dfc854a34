#!/usr/bin/env python3
"""Black-box mutation fuzzing of a built `tollgate` binary (no instrumentation, no rebuild).

    fuzz/blackbox.py --bin PATH/tollgate [--seconds 120] [--only check|requests|streams]

Complements the coverage-guided targets of fuzz/ when they cannot be built (a cold cache on a
small machine): it mutates real inputs and watches the real binary.
  check     mutated gateway.toml, access rules, routing scripts and plugin manifests through
            `tollgate check` (the loader reloads use): a finding is a panic, a crash, a hang.
  requests  mutated request bodies on every endpoint family of a running gateway: a finding is
            a panic in its log, a 500, a dropped connection, or an error body not in the
            family's shape.
  streams   a provider (this script) answering mutated SSE streams of every family, relayed
            natively and translated across families, with a stream guardrail: a finding is a
            panic, a dropped connection, or a stream that does not end.
Findings are printed and saved under fuzz/artifacts/blackbox/; exit status 1 if any.
"""

import argparse
import http.client
import http.server
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ART = os.path.join(ROOT, "fuzz/artifacts/blackbox")
rng = random.Random(int(os.environ.get("FUZZ_SEED", "0")) or None)
INTERESTING = ["", "0", "-1", "1e999", "18446744073709551615", "-9223372036854775809", "null",
               "true", "[]", "{}", '"\\u0000"', '"\\ud800"', '"' + "A" * 5000 + '"', "1.5",
               '"x"', "[[[[[[[[[[]]]]]]]]]]", '{"a":', "\"", "\u00e9", "\U0001F600"]


def _ok(v):
    try:
        json.loads(v)
        return True
    except ValueError:
        return False


JSON_VALUES = [json.loads(v) for v in INTERESTING if _ok(v)]


def mutate_text(text):
    """A few byte/token level mutations of `text`."""
    data = list(text)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(7)
        pos = rng.randrange(len(data) + 1)
        if op == 0 and data:
            del data[pos % len(data)]
        elif op == 1:
            data[pos:pos] = list(rng.choice(INTERESTING))
        elif op == 2 and data:
            a = rng.randrange(len(data))
            b = min(len(data), a + rng.randint(1, 40))
            data[pos:pos] = data[a:b]
        elif op == 3 and data:
            data[pos % len(data)] = chr(rng.randrange(0, 0x250))
        elif op == 4:
            data[pos:pos] = list(rng.choice(["\n", "[", "]", "{", "}", "=", "\"", ",", ":", "#",
                                             "data: ", "\n\n", "\r\n", "event: error\n"]))
        elif op == 5 and data:
            del data[pos:pos + rng.randint(1, 200)]
        else:
            digits = [i for i, c in enumerate(data) if c.isdigit()]
            if digits:
                i = rng.choice(digits)
                data[i:i + 1] = list(rng.choice(["0", "9999999999999999999999", "-1", "1e308"]))
    return "".join(data)


def mutate_json(value, depth=0):
    """Structure-aware mutation of a JSON value."""
    if depth > 6:
        return value
    r = rng.random()
    if isinstance(value, dict) and value:
        value = dict(value)
        k = rng.choice(list(value))
        if r < 0.15:
            del value[k]
        elif r < 0.3:
            value[k] = rng.choice(JSON_VALUES)
        else:
            value[k] = mutate_json(value[k], depth + 1)
        return value
    if isinstance(value, list) and value:
        value = list(value)
        i = rng.randrange(len(value))
        if r < 0.2:
            del value[i]
        elif r < 0.4:
            value.append(value[i])
        else:
            value[i] = mutate_json(value[i], depth + 1)
        return value
    return rng.choice(JSON_VALUES)


class Findings:
    def __init__(self):
        self.items = []
        os.makedirs(ART, exist_ok=True)

    def add(self, kind, detail, data):
        name = f"{kind}-{len(self.items)}-{int(time.time())}"
        with open(os.path.join(ART, name), "w", errors="replace") as f:
            f.write(data)
        self.items.append(f"{kind}: {detail} (input in fuzz/artifacts/blackbox/{name})")
        print(f"FINDING {kind}: {detail}", file=sys.stderr, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# --- check -------------------------------------------------------------------------------

def seeds_for_check():
    seeds = []
    for folder, kind in [("access", "cel"), ("routing", "rhai")]:
        d = os.path.join(ROOT, "policies", folder)
        for name in sorted(os.listdir(d)):
            seeds.append((f"{folder}/{name}", open(os.path.join(d, name)).read()))
    seeds.append(("gateway.toml", open(os.path.join(ROOT, "policies/gateway.toml")).read()))
    seeds.append(("plugins/fuzz.toml", 'wasm = "x.wasm"\nworld = "guardrail"\nphases = ["request", "stream"]\nfailure_mode = "closed"\n[applies_to]\nmodels = ["*"]\n[limits]\nmemory_mb = 64\ntime_ms = 50\ninstances = 4\nstream_window = 256\n[config]\nmode = "mask"\n'))
    return seeds


def run_check(binary, deadline, findings):
    base = os.path.join(ROOT, "policies")
    seeds = seeds_for_check()
    runs = 0
    work = tempfile.mkdtemp(prefix="tollgate-bbfuzz-")
    while time.time() < deadline:
        dirpath = os.path.join(work, "p")
        shutil.rmtree(dirpath, ignore_errors=True)
        os.makedirs(os.path.join(dirpath, "access"))
        os.makedirs(os.path.join(dirpath, "routing"))
        os.makedirs(os.path.join(dirpath, "plugins"))
        # The demo gateway.toml without plugins; one mutated file.
        text = open(os.path.join(base, "gateway.toml")).read().replace('allowed_dirs = ["../plugins/dist"]', "")
        with open(os.path.join(dirpath, "gateway.toml"), "w") as f:
            f.write(text)
        for folder in ("access", "routing"):
            for name in os.listdir(os.path.join(base, folder)):
                shutil.copy(os.path.join(base, folder, name), os.path.join(dirpath, folder, name))
        path, seed = rng.choice(seeds)
        mutated = seed
        for _ in range(rng.randint(1, 3)):
            mutated = mutate_text(mutated)
        try:
            with open(os.path.join(dirpath, path), "w", errors="replace") as f:
                f.write(mutated)
        except OSError:
            continue
        try:
            out = subprocess.run([binary, "check", dirpath], capture_output=True, text=True,
                                 timeout=30, errors="replace")
            runs += 1
            if out.returncode not in (0, 1) or "panicked" in out.stderr:
                findings.add("check", f"{path}: exit {out.returncode}: {out.stderr[-300:]}", mutated)
        except subprocess.TimeoutExpired:
            findings.add("check-hang", f"{path}: tollgate check ran over 30 s", mutated)
    shutil.rmtree(work, ignore_errors=True)
    return runs


# --- a scriptable provider ----------------------------------------------------------------

OPENAI_SSE = "".join(f"data: {json.dumps(c)}\n\n" for c in [
    {"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
    {"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "Hello jane.doe@example.com AKIAIOSFODNN7EXAMPLE"}}]},
    {"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "t", "type": "function", "function": {"name": "f", "arguments": "{\"a\":"}}]}}]},
    {"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
    {"id": "c", "object": "chat.completion.chunk", "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}},
]) + "data: [DONE]\n\n"
ANTHROPIC_SSE = "".join(f"event: {e}\ndata: {json.dumps(x)}\n\n" for e, x in [
    ("message_start", {"type": "message_start", "message": {"id": "m", "role": "assistant", "content": [], "usage": {"input_tokens": 5, "output_tokens": 1}}}),
    ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hi there"}}),
    ("content_block_start", {"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "t", "name": "f", "input": {}}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"a\": 1}"}}),
    ("content_block_stop", {"type": "content_block_stop", "index": 0}),
    ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 9}}),
    ("message_stop", {"type": "message_stop"}),
])
GEMINI_SSE = "".join(f"data: {json.dumps(x)}\r\n\r\n" for x in [
    {"candidates": [{"content": {"role": "model", "parts": [{"text": "hi"}]}}]},
    {"candidates": [{"content": {"role": "model", "parts": [{"functionCall": {"name": "f", "args": {"a": 1}}}]}, "finishReason": "STOP"}],
     "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 2, "totalTokenCount": 5}},
])
OPENAI_JSON = {"id": "c", "object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi", "tool_calls": [{"id": "t", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}, "finish_reason": "tool_calls"}], "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}}
ANTHROPIC_JSON = {"id": "m", "type": "message", "role": "assistant", "content": [{"type": "text", "text": "hi"}, {"type": "tool_use", "id": "t", "name": "f", "input": {"a": 1}}], "stop_reason": "tool_use", "usage": {"input_tokens": 3, "output_tokens": 4}}
GEMINI_JSON = {"candidates": [{"content": {"role": "model", "parts": [{"text": "hi"}]}, "finishReason": "STOP"}], "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 2, "totalTokenCount": 5}}


class Provider(http.server.ThreadingHTTPServer):
    daemon_threads = True
    mutate = False
    last = ""


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length)
        try:
            req = json.loads(body or b"{}")
        except ValueError:
            req = {}
        path = self.path
        stream = bool(req.get("stream")) or "stream" in path or "alt=sse" in path
        if "/messages" in path:
            sse, whole = ANTHROPIC_SSE, ANTHROPIC_JSON
        elif "models/" in path:
            sse, whole = GEMINI_SSE, GEMINI_JSON
        else:
            sse, whole = OPENAI_SSE, OPENAI_JSON
        server = self.server
        if stream:
            text = mutate_text(sse) if server.mutate else sse
            server.last = text
            payload = text.encode("utf-8", errors="replace")
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            # Written in random pieces.
            i = 0
            while i < len(payload):
                n = rng.randint(1, 64)
                self.wfile.write(payload[i:i + n])
                i += n
            return
        value = mutate_json(whole) if server.mutate else whole
        text = json.dumps(value)
        if server.mutate and rng.random() < 0.2:
            text = mutate_text(text)
        server.last = text
        payload = text.encode("utf-8", errors="replace")
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


POLICY = """
[server]
max_body_bytes = 1048576

[providers.oa]
family = "openai"
base_url = "{base}/v1"
timeout_ms = 5000
total_timeout_ms = 10000

[providers.an]
family = "anthropic"
base_url = "{base}/v1"
timeout_ms = 5000
total_timeout_ms = 10000

[providers.ge]
family = "gemini"
base_url = "{base}/v1beta"
timeout_ms = 5000
total_timeout_ms = 10000

[models.oa]
provider = "oa"
translate = true
pricing = {{ input_per_mtok = 1.0, output_per_mtok = 2.0 }}

[models.an]
provider = "an"
translate = true
pricing = {{ input_per_mtok = 1.0, output_per_mtok = 2.0 }}

[models.ge]
provider = "ge"
translate = true
pricing = {{ input_per_mtok = 1.0, output_per_mtok = 2.0 }}

[[budgets]]
scope = "organization"
window = "monthly"
limit_usd = 100000.0
"""

MANIFEST = """
wasm = "plugins/pii-guard.wasm"
world = "guardrail"
phases = ["request", "response", "stream"]
failure_mode = "closed"
[applies_to]
models = ["*"]
[limits]
memory_mb = 64
time_ms = 200
instances = 4
stream_window = 64
[config]
mode = "mask"
block = ["private_key"]
"""

ENDPOINTS = [
    ("/v1/chat/completions", "openai", {"model": "oa", "messages": [{"role": "user", "content": "hi jane.doe@example.com"}], "max_tokens": 20, "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]}),
    ("/v1/completions", "openai", {"model": "oa", "prompt": ["hi", "there"], "max_tokens": 5}),
    ("/v1/embeddings", "openai", {"model": "oa", "input": ["a", "b"]}),
    ("/v1/responses", "openai", {"model": "oa", "input": [{"role": "user", "content": "hi"}], "max_output_tokens": 20}),
    ("/v1/images/generations", "openai", {"model": "oa", "prompt": "a cat", "n": 1, "size": "1024x1024"}),
    ("/v1/messages", "anthropic", {"model": "an", "max_tokens": 50, "system": "s", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}),
    ("/v1/messages/count_tokens", "anthropic", {"model": "an", "messages": [{"role": "user", "content": "hi"}]}),
    ("/v1beta/models/ge:generateContent", "gemini", {"contents": [{"role": "user", "parts": [{"text": "hi"}]}], "generationConfig": {"maxOutputTokens": 20}}),
    ("/v1beta/models/ge:countTokens", "gemini", {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}),
    ("/v1beta/models/ge:embedContent", "gemini", {"content": {"parts": [{"text": "hi"}]}}),
    ("/v1/llm/chat", "openai", {"model": "an", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20}),
    # Across families (translate = true).
    ("/v1/messages", "anthropic", {"model": "oa", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}], "tools": [{"name": "f", "input_schema": {"type": "object"}}]}),
    ("/v1beta/models/an:generateContent", "gemini", {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}),
    ("/v1/chat/completions", "openai", {"model": "ge", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20}),
]


def family_shaped(family, status, text):
    try:
        body = json.loads(text)
    except ValueError:
        return False
    if family == "anthropic":
        return body.get("type") == "error" and isinstance(body.get("error"), dict) and "message" in body["error"]
    if family == "gemini":
        e = body.get("error")
        return isinstance(e, dict) and e.get("code") == status and "message" in e
    e = body.get("error")
    return isinstance(e, dict) and "message" in e and "code" in e


class Gateway:
    def __init__(self, binary, providers_base, findings):
        self.dir = tempfile.mkdtemp(prefix="tollgate-bbfuzz-gw-")
        pol = os.path.join(self.dir, "policies")
        os.makedirs(os.path.join(pol, "plugins"))
        wasm = os.path.join(ROOT, "plugins/dist/pii-guard.wasm")
        with open(os.path.join(pol, "gateway.toml"), "w") as f:
            f.write(POLICY.format(base=providers_base))
        if os.path.exists(wasm):
            shutil.copy(wasm, os.path.join(pol, "plugins/pii-guard.wasm"))
            with open(os.path.join(pol, "plugins/pii-guard.toml"), "w") as f:
                f.write(MANIFEST)
        self.db = f"sqlite://{self.dir}/t.db"
        self.port = free_port()
        self.log_path = os.path.join(self.dir, "gateway.log")
        self.binary, self.pol, self.findings = binary, pol, findings
        self.start()
        out = subprocess.run([binary, "keys", "create", "--name", "f", "--models", "*", "--json",
                              "--database", self.db], capture_output=True, text=True)
        self.secret = json.loads(out.stdout)["secret"]

    def start(self):
        self.log = open(self.log_path, "a")
        self.proc = subprocess.Popen([self.binary, "serve", "--policies", self.pol, "--listen",
                                      f"127.0.0.1:{self.port}", "--database", self.db],
                                     stdout=subprocess.PIPE, stderr=self.log, text=True,
                                     env=dict(os.environ, RUST_LOG="warn"))
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("gateway did not start")
            if line.startswith("tollgate listening on"):
                break
        threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True).start()

    def alive(self, data):
        if self.proc.poll() is not None:
            self.findings.add("gateway-died", f"exit {self.proc.returncode}", data)
            self.start()
            return False
        return True

    def panics(self):
        with open(self.log_path, errors="replace") as f:
            return f.read().count("panicked")

    def send(self, path, body, stream=False):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=40)
        conn.request("POST", path, body, {"Authorization": f"Bearer {self.secret}",
                                          "x-api-key": self.secret,
                                          "content-type": "application/json"})
        resp = conn.getresponse()
        text = resp.read().decode("utf-8", errors="replace")
        conn.close()
        return resp.status, text

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        if self.findings.items:
            # Keep the gateway's log (panic messages) and store next to the findings.
            kept = os.path.join(ART, f"gateway-{int(time.time())}")
            shutil.copytree(self.dir, kept, dirs_exist_ok=True)
            print(f"gateway log and store kept in {kept}", file=sys.stderr)
        shutil.rmtree(self.dir, ignore_errors=True)


def run_requests(gw, deadline, findings):
    runs = 0
    while time.time() < deadline:
        path, family, seed = rng.choice(ENDPOINTS)
        if rng.random() < 0.7:
            body = json.dumps(mutate_json(mutate_json(seed)))
        else:
            body = mutate_text(json.dumps(seed))
        panics = gw.panics()
        try:
            status, text = gw.send(path, body.encode("utf-8", errors="replace"))
            runs += 1
            if status >= 500 and status not in (502, 503, 504):
                findings.add("request-5xx", f"{path}: {status} {text[:200]}", body)
            elif status >= 400 and not family_shaped(family, status, text):
                findings.add("request-shape", f"{path}: {status} {text[:200]}", body)
        except (OSError, http.client.HTTPException) as e:
            findings.add("request-dropped", f"{path}: {type(e).__name__}: {e}", body)
        gw.alive(body)
        if gw.panics() > panics:
            findings.add("request-panic", f"{path}: panic in the gateway log", body)
    return runs


def run_streams(gw, provider, deadline, findings):
    runs = 0
    provider.mutate = True
    stream_endpoints = [
        ("/v1/chat/completions", {"model": "oa", "stream": True, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20}),
        ("/v1/chat/completions", {"model": "an", "stream": True, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20}),
        ("/v1/chat/completions", {"model": "ge", "stream": True, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20}),
        ("/v1/messages", {"model": "an", "stream": True, "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}),
        ("/v1/messages", {"model": "oa", "stream": True, "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}),
        ("/v1beta/models/ge:streamGenerateContent?alt=sse", {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}),
        ("/v1beta/models/oa:streamGenerateContent", {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}),
        ("/v1/llm/chat", {"model": "an", "stream": True, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20}),
        ("/v1/chat/completions", {"model": "oa", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20}),
        ("/v1/messages", {"model": "ge", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}),
    ]
    while time.time() < deadline:
        path, body = rng.choice(stream_endpoints)
        panics = gw.panics()
        started = time.time()
        try:
            status, text = gw.send(path, json.dumps(body).encode())
            runs += 1
            if status >= 500 and status not in (502, 503, 504):
                findings.add("stream-5xx", f"{path} {body['model'] if 'model' in body else ''}: {status} {text[:200]}", provider.last)
        except (OSError, http.client.HTTPException) as e:
            findings.add("stream-dropped", f"{path}: {type(e).__name__}: {e} after {time.time() - started:.1f}s", provider.last)
        gw.alive(provider.last)
        if gw.panics() > panics:
            findings.add("stream-panic", f"{path}: panic in the gateway log", provider.last)
    provider.mutate = False
    return runs


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True)
    ap.add_argument("--seconds", type=float, default=120)
    ap.add_argument("--only", choices=["check", "requests", "streams"])
    args = ap.parse_args()
    findings = Findings()
    report = []
    modes = [args.only] if args.only else ["check", "requests", "streams"]
    provider = gw = None
    if "requests" in modes or "streams" in modes:
        provider = Provider(("127.0.0.1", 0), Handler)
        threading.Thread(target=provider.serve_forever, daemon=True).start()
        gw = Gateway(args.bin, f"http://127.0.0.1:{provider.server_address[1]}", findings)
    try:
        for mode in modes:
            before = len(findings.items)
            deadline = time.time() + args.seconds
            if mode == "check":
                runs = run_check(args.bin, deadline, findings)
            elif mode == "requests":
                runs = run_requests(gw, deadline, findings)
            else:
                runs = run_streams(gw, provider, deadline, findings)
            report.append(f"{mode}: {runs} executions in {args.seconds:.0f} s, {len(findings.items) - before} findings")
    finally:
        if gw:
            gw.stop()
        if provider:
            provider.shutdown()
    print("black-box fuzz summary:")
    for line in report:
        print(f"  {line}")
    for item in findings.items:
        print(f"  FINDING {item}")
    return 1 if findings.items else 0


if __name__ == "__main__":
    sys.exit(main())
