"""Drives the `custom_tools` example of exai-transport with the official MCP
Python SDK 2.x over Streamable HTTP: lists the tools, calls `add`, in both
of the SDK's modes (`legacy`: the initialize handshake and a session;
`auto`: 2026-07-28, statelessly, when the server speaks it).

Usage: mcp_add_client.py URL   (the token in EXAI_TOKEN)
Prints one JSON object: {"legacy": {...}, "auto": {...}}.
"""

import asyncio
import json
import os
import sys

from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client


async def run(url, mode, token):
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
    async with http:
        transport = streamable_http_client(url, http_client=http)
        async with Client(transport, mode=mode) as client:
            tools = await client.list_tools()
            sum_ = await client.call_tool("add", {"a": 40, "b": 2})
            return {
                "protocol": client.session.protocol_version,
                "tools": sorted(tool.name for tool in tools.tools),
                "sum": sum_.content[0].text,
                "is_error": sum_.is_error,
            }


async def main():
    url, token = sys.argv[1], os.environ["EXAI_TOKEN"]
    report = {mode: await run(url, mode, token) for mode in ("legacy", "auto")}
    print(json.dumps(report), flush=True)


asyncio.run(main())
