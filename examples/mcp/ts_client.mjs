// The official MCP TypeScript SDK (`npm install @modelcontextprotocol/sdk`) through tollgate:
// connect, list tools, call one, terminate the session (an HTTP DELETE).
//
//   TOLLGATE_API_KEY=tg_... node ts_client.mjs http://127.0.0.1:8080/v1/mcp/everything echo '{"message":"hi"}'
//
// In an application, import "@modelcontextprotocol/sdk/client/index.js" and
// "@modelcontextprotocol/sdk/client/streamableHttp.js" directly; this script finds the SDK
// through MCP_SDK_DIR (or node_modules beside it) so the test suite can run it from a cache.
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const sdk = process.env.MCP_SDK_DIR ?? join(import.meta.dirname, "node_modules/@modelcontextprotocol/sdk");
const load = (path) => import(pathToFileURL(join(sdk, "dist/esm", path)).href);
const { Client } = await load("client/index.js");
const { StreamableHTTPClientTransport } = await load("client/streamableHttp.js");

const [url, tool, args] = process.argv.slice(2);
const transport = new StreamableHTTPClientTransport(new URL(url), {
  requestInit: { headers: { Authorization: `Bearer ${process.env.TOLLGATE_API_KEY}` } },
});
const client = new Client({ name: "tollgate-example", version: "1.0.0" });
await client.connect(transport);
console.log(JSON.stringify({ session: Boolean(transport.sessionId) }));
const { tools } = await client.listTools();
console.log(JSON.stringify({ tools: tools.map((t) => t.name).sort() }));
if (tool) {
  try {
    const result = await client.callTool({ name: tool, arguments: JSON.parse(args ?? "{}") });
    const text = result.content.filter((c) => c.type === "text").map((c) => c.text).join(" ");
    console.log(JSON.stringify({ call: tool, is_error: Boolean(result.isError), text }));
  } catch (e) {
    console.log(JSON.stringify({ call: tool, error: e.code, message: e.message, data: e.data ?? null }));
  }
}
await transport.terminateSession();
await client.close();
