"""Drives the daemon's WebSocket with the official MCP Python SDK 1.x's
WebSocket client (`mcp.client.websocket`, gone from 2.x).

Usage: mcp_ws_client.py URL
Tokens come from EXAI_TOKENS (comma-separated); each gets its own client and
all run at once. Each lists the tools, calls `whoami` and `chat` (asking for
progress reports), then starts a `chat` and cancels it: run the daemon with
a slow echo model. Prints one JSON object: {"clients": [...]} in token order.

The SDK's client cannot set headers; the one thing this script adds is the
`Authorization` header, by handing the SDK a `connect` that sends it.
"""

import asyncio
import functools
import json
import os
import sys

import anyio
import mcp.client.websocket as sdk_websocket
from mcp import ClientSession, types
from websockets.asyncio.client import connect


async def run(url, token):
    # The SDK calls `ws_connect(url, subprotocols=["mcp"])`.
    sdk_websocket.ws_connect = functools.partial(
        connect, additional_headers={"Authorization": f"Bearer {token}"}
    )
    async with sdk_websocket.websocket_client(url) as (read, write):
        async with ClientSession(read, write) as session:
            init = await session.initialize()
            tools = await session.list_tools()
            who = await session.call_tool("whoami", {})
            progress = []

            async def on_progress(value, total, message):
                progress.append(value)

            chat = await session.call_tool(
                "chat", {"prompt": "hello over a websocket"}, progress_callback=on_progress
            )

            # Cancel a call the way the protocol does: notifications/cancelled
            # with its request id (1.x does not send it by itself).
            request_id = session._request_id
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(session.call_tool, "chat", {"prompt": "never mind"})
                await anyio.sleep(0.3)
                await session.send_notification(
                    types.ClientNotification(
                        types.CancelledNotification(
                            params=types.CancelledNotificationParams(
                                requestId=request_id, reason="changed my mind"
                            )
                        )
                    )
                )
                # Stop waiting for it here too; the daemon sends no answer.
                tasks.cancel_scope.cancel()
            who_after = await session.call_tool("whoami", {})
            return {
                "server": init.serverInfo.name,
                "protocol": init.protocolVersion,
                "tools": sorted(tool.name for tool in tools.tools),
                "whoami": who.structuredContent,
                "chat": chat.content[0].text,
                "progress": progress,
                "whoami_after": who_after.structuredContent,
            }


async def main():
    url = sys.argv[1]
    tokens = os.environ["EXAI_TOKENS"].split(",")
    clients = await asyncio.gather(*(run(url, token) for token in tokens))
    print(json.dumps({"clients": clients}), flush=True)


asyncio.run(main())
