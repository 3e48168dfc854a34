"""The official MCP Python SDK (`pip install mcp`) through tollgate: connect, list tools, call some.

    TOLLGATE_API_KEY=tg_... python3 python_client.py http://127.0.0.1:8080/v1/mcp/everything \
        'echo={"message": "hi"}' 'get-sum={"a": 2, "b": 3}'

The gateway URL replaces the server's URL; the virtual key goes in `Authorization: Bearer`. The
SDK's default mode probes `server/discover` and falls back to `initialize` (MCP_MODE=legacy forces
the handshake). MCP_TRANSPORT=sse talks to a legacy SSE server through the gateway instead.
Prints one JSON line per step, so scripts and tests can read it.
"""

import asyncio
import json
import os
import sys

from mcp import Client, MCPError
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client


def text_of(result):
    return " ".join(c.text for c in result.content if getattr(c, "type", "") == "text")


async def main() -> None:
    url = sys.argv[1]
    headers = {"Authorization": f"Bearer {os.environ['TOLLGATE_API_KEY']}"}
    mode = os.environ.get("MCP_MODE", "auto")
    async with create_mcp_http_client(headers=headers) as http:
        if os.environ.get("MCP_TRANSPORT") == "sse":
            transport = sse_client(url, headers=headers)
        else:
            transport = streamable_http_client(url, http_client=http)
        async with Client(transport, mode=mode) as client:
            print(json.dumps({"protocol": client.protocol_version}), flush=True)
            tools = await client.list_tools()
            print(json.dumps({"tools": sorted(t.name for t in tools.tools)}), flush=True)
            for spec in sys.argv[2:]:
                name, _, args = spec.partition("=")
                try:
                    result = await client.call_tool(name, json.loads(args or "{}"))
                    print(json.dumps({"call": name, "is_error": bool(result.is_error), "text": text_of(result)}), flush=True)
                except MCPError as e:
                    print(json.dumps({"call": name, "error": e.code, "message": e.message, "data": e.data}), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
