# One keep-alive connection sending the bench chat request N times (bench/callgrind/run.sh).
# usage: drive.py PORT KEY N [PATH] [MODEL]
import http.client, json, sys
port, key, n, path = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4] if len(sys.argv) > 4 else "/v1/chat/completions"
model = sys.argv[5] if len(sys.argv) > 5 else "bench-chat"
notes = "at 09:12 the ingest queue backed up after a config push; consumers were restarted at 09:31; lag recovered by 09:48; no data was lost. "
user = "Summarise the following incident notes in three bullet points and propose one follow-up action. Notes: "
while len(user) < 720: user += notes
body = json.dumps({"model": model, "messages": [{"role": "system", "content": "You are a concise assistant for an internal engineering team. Answer in plain English, cite the document section you used, and say so when you do not know."}, {"role": "user", "content": user}], "temperature": 0.2, "max_tokens": 256, "user": "bench-user-42"})
c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
bad = 0
for i in range(n):
    c.request("POST", path, body=body, headers={"authorization": "Bearer " + key, "content-type": "application/json"})
    r = c.getresponse(); d = r.read()
    if r.status != 200:
        bad += 1
        if bad < 3: print("status", r.status, d[:300], file=sys.stderr)
print("done", n, "bad", bad, file=sys.stderr)
# A count of failed requests measures the error path, not the one asked for.
sys.exit(1 if bad else 0)
