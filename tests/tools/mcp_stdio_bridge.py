"""Drives `exai connect` with the official MCP Python SDK's stdio client, the
way an editor that launches a command does.

Usage: mcp_stdio_bridge.py EXAI_BINARY DAEMON_URL
(the credential comes from the environment, e.g. EXAI_TOKEN).

Prints one JSON line after each phase and, between the phases, waits for a
line on standard input: the test restarts the daemon meanwhile, and the
second phase must work over the same MCP session of the SDK.
"""

import asyncio
import json
import os
import sys

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client


def report(value):
    print(json.dumps(value), flush=True)


async def main():
    exai, url = sys.argv[1], sys.argv[2]
    params = StdioServerParameters(
        command=exai, args=["connect", "--url", url], env=dict(os.environ)
    )
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as session:
            init = await session.initialize()
            tools = await session.list_tools()
            who = await session.call_tool("whoami", {})
            chat = await session.call_tool("chat", {"prompt": "hello through the bridge"})
            report(
                {
                    "phase": "before",
                    "server": init.serverInfo.name,
                    "protocol": init.protocolVersion,
                    "tools": sorted(tool.name for tool in tools.tools),
                    "whoami": who.structuredContent,
                    "chat": chat.content[0].text,
                    "chat_is_error": chat.isError,
                }
            )
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
            who = await session.call_tool("whoami", {})
            report({"phase": "after", "whoami": who.structuredContent, "is_error": who.isError})


asyncio.run(main())
