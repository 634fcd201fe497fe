"""Drives the daemon's Streamable HTTP endpoint with the official MCP Python
SDK 2.x, as an editor configured with a URL and an `Authorization` header
does (VSCode's `"type": "http"` server, Claude Code's `--transport http`).

Usage: mcp_http_client.py URL MODE
  MODE  legacy      the initialize handshake, with a session (2025-11-25 and
                    earlier)
        auto        what the SDK does by default: probe `server/discover`
                    and use 2026-07-28, statelessly, when the server speaks it
Tokens come from EXAI_TOKENS (comma-separated); each gets its own client and
all run at once. Each lists the tools, calls `whoami` and `chat` (asking for
progress reports), then gives up on a `chat` after 0.3 s, which makes the
SDK cancel it (`notifications/cancelled`, or a dropped request when
stateless): run the daemon with a slow echo model. Prints one JSON object:
{"clients": [...]} in token order.
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
            who = await client.call_tool("whoami", {})
            progress = []

            async def on_progress(value, total, message):
                progress.append(value)

            chat = await client.call_tool(
                "chat", {"prompt": "hello over http"}, progress_callback=on_progress
            )
            try:
                await client.call_tool(
                    "chat", {"prompt": "too slow"}, read_timeout_seconds=0.3
                )
                gave_up = False
            except Exception:  # the SDK's timeout error
                gave_up = True
            return {
                "protocol": client.session.protocol_version,
                "tools": sorted(tool.name for tool in tools.tools),
                "whoami": who.structured_content,
                "chat": chat.content[0].text,
                "chat_is_error": chat.is_error,
                "progress": progress,
                "gave_up": gave_up,
            }


async def main():
    url, mode = sys.argv[1], sys.argv[2]
    tokens = os.environ["EXAI_TOKENS"].split(",")
    clients = await asyncio.gather(*(run(url, mode, token) for token in tokens))
    print(json.dumps({"clients": clients}), flush=True)


asyncio.run(main())
