// Drives the daemon with the official MCP TypeScript SDK.
//
// Usage: node --experimental-websocket client.mjs websocket|http URL
// The SDK is found in EXAI_TEST_NODE_MODULES (cargo xtask test installs it
// there). Tokens come from EXAI_TOKENS (comma-separated): each gets its own
// client, and their calls run at once. Each lists the tools, calls `whoami`
// and `chat` (with a progress callback), starts a `chat` and aborts it (the
// SDK sends notifications/cancelled), and calls `whoami` again: run the
// daemon with a slow echo model. Prints {"clients": [...]} in token order.
//
// WebSocket: the SDK's WebSocketClientTransport offers only the `mcp`
// subprotocol and cannot set headers, as in a browser; the token goes where
// a browser page puts it, in an extra `mcp.auth.<token>` subprotocol.

import { createRequire } from "node:module";

const require = createRequire(`${process.env.EXAI_TEST_NODE_MODULES}/`);
const { Client } = require("@modelcontextprotocol/sdk/client/index.js");
const { WebSocketClientTransport } = require("@modelcontextprotocol/sdk/client/websocket.js");
const { StreamableHTTPClientTransport } = require("@modelcontextprotocol/sdk/client/streamableHttp.js");

const [kind, url] = process.argv.slice(2);
const tokens = process.env.EXAI_TOKENS.split(",");

async function connect(token) {
  const client = new Client({ name: "exai-ts-test", version: "1.0.0" });
  if (kind === "websocket") {
    const BrowserWebSocket = globalThis.WebSocket;
    globalThis.WebSocket = class extends BrowserWebSocket {
      constructor(address, protocols) {
        super(address, [protocols, `mcp.auth.${token}`].flat());
      }
    };
    try {
      await client.connect(new WebSocketClientTransport(new URL(url)));
    } finally {
      globalThis.WebSocket = BrowserWebSocket;
    }
  } else {
    const transport = new StreamableHTTPClientTransport(new URL(url), {
      requestInit: { headers: { Authorization: `Bearer ${token}` } },
    });
    await client.connect(transport);
  }
  return client;
}

async function exercise(client) {
  const tools = await client.listTools();
  const who = await client.callTool({ name: "whoami", arguments: {} });
  const progress = [];
  const chat = await client.callTool(
    { name: "chat", arguments: { prompt: `hello over ${kind}` } },
    undefined,
    { onprogress: (p) => progress.push(p.progress) },
  );
  const abort = new AbortController();
  const slow = client.callTool({ name: "chat", arguments: { prompt: "never mind" } }, undefined, {
    signal: abort.signal,
  });
  setTimeout(() => abort.abort("changed my mind"), 300);
  let aborted = false;
  try {
    await slow;
  } catch {
    aborted = true;
  }
  const whoAfter = await client.callTool({ name: "whoami", arguments: {} });
  await client.close();
  return {
    server: client.getServerVersion()?.name,
    tools: tools.tools.map((t) => t.name).sort(),
    whoami: who.structuredContent,
    chat: chat.content[0].text,
    progress,
    aborted,
    whoami_after: whoAfter.structuredContent,
  };
}

// Connect one at a time (the WebSocket's token is set per connection), then
// run side by side.
const clients = [];
for (const token of tokens) {
  clients.push(await connect(token));
}
const reports = await Promise.all(clients.map(exercise));
console.log(JSON.stringify({ clients: reports }));
