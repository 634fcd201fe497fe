"""Drives the daemon's Streamable HTTP endpoint with an older release of the
official MCP Python SDK (1.12), which logged "Error parsing SSE message"
with a traceback for every SSE priming event it did not expect.

Usage: mcp_old_http_client.py URL
The token comes from EXAI_TOKENS. Lists the tools, calls `whoami` and
`chat`, and closes. Prints one JSON object: {"email", "chat", "errors"},
errors being every log record at WARNING or above across the session.
"""

import asyncio
import json
import logging
import os
import sys

from mcp import ClientSession
from mcp.client.streamable_http import streamablehttp_client


class Collect(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.WARNING)
        self.records = []

    def emit(self, record):
        self.records.append(f"{record.name}: {record.getMessage()}")


async def main(url, token):
    collected = Collect()
    logging.getLogger().addHandler(collected)
    headers = {"Authorization": f"Bearer {token}"}
    async with streamablehttp_client(url, headers=headers) as (read, write, _):
        async with ClientSession(read, write) as session:
            await session.initialize()
            await session.list_tools()
            who = await session.call_tool("whoami", {})
            chat = await session.call_tool("chat", {"prompt": "old but gold"})
            # Errors logged after the answers, as the SDK reads the rest.
            await asyncio.sleep(0.3)
    print(
        json.dumps(
            {
                "email": (who.structuredContent or {}).get("email"),
                "chat": chat.content[0].text if chat.content else None,
                "errors": collected.records,
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], os.environ["EXAI_TOKENS"].split(",")[0]))
