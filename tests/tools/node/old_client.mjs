// Drives the daemon's Streamable HTTP endpoint with an older release of the
// official MCP TypeScript SDK (1.17, as editors still ship it), which
// raised `onerror` on every SSE priming event it did not expect.
//
// Usage: node old_client.mjs URL
// The SDK is `sdk-1-17` in EXAI_TEST_NODE_MODULES (cargo xtask test
// installs it). The token comes from EXAI_TOKENS. Lists the tools, calls
// `whoami` and `chat`, and closes. Prints {"email", "chat", "errors"}:
// every error the client or its transport reported across the session.

import { createRequire } from "node:module";

const require = createRequire(`${process.env.EXAI_TEST_NODE_MODULES}/`);
const { Client } = require("sdk-1-17/client/index.js");
const { StreamableHTTPClientTransport } = require("sdk-1-17/client/streamableHttp.js");

const [url] = process.argv.slice(2);
const token = process.env.EXAI_TOKENS.split(",")[0];
const errors = [];
const client = new Client({ name: "exai-ts-1.17-test", version: "1.0.0" });
client.onerror = (error) => errors.push(String(error));
const transport = new StreamableHTTPClientTransport(new URL(url), {
  requestInit: { headers: { Authorization: `Bearer ${token}` } },
});
await client.connect(transport);
await client.listTools();
const who = await client.callTool({ name: "whoami", arguments: {} });
const chat = await client.callTool({ name: "chat", arguments: { prompt: "old but gold" } });
// Errors reported after the answers, as the SDK parses the rest.
await new Promise((resolve) => setTimeout(resolve, 300));
await client.close();
console.log(
  JSON.stringify({
    email: who.structuredContent?.email ?? null,
    chat: chat.content?.[0]?.text ?? null,
    errors,
  }),
);
