//! `chat`: ask any OpenAI-compatible endpoint, the answer streamed to
//! stdout as it comes.
//!
//! ```text
//! cargo run -p exai-providers --example chat -- \
//!     --base-url https://api.moonshot.ai/v1 --model kimi-k2-0905-preview \
//!     --key-env KIMI_API_KEY "Why is the sky blue?"
//! ```
//!
//! The key is read from the variable `--key-env` names (default
//! `OPENAI_API_KEY`; unset: no key, as a local server wants), never from
//! the command line. Retries, timeouts and errors are the provider
//! client's own; an error names the provider and the status, never the
//! key.

#![allow(clippy::print_stdout, reason = "an example prints the answer")]

use std::io::Write as _;

use exai_auth::Secret;
use exai_providers::{ChatMessage, ChatRequest, OpenAiConfig, OpenAiProvider, Provider, Role};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut base_url = None;
    let mut model = None;
    let mut key_env = "OPENAI_API_KEY".to_owned();
    let mut prompt = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--base-url" => base_url = args.next(),
            "--model" => model = args.next(),
            "--key-env" => key_env = args.next().ok_or("--key-env needs a variable name")?,
            _ => prompt.push(arg),
        }
    }
    let usage = "usage: chat --base-url URL --model MODEL [--key-env VAR] PROMPT...";
    let (Some(base_url), Some(model)) = (base_url, model) else {
        return Err(usage.into());
    };
    if prompt.is_empty() {
        return Err(usage.into());
    }

    let mut config = OpenAiConfig::new("example", base_url, vec![model.clone()]);
    if let Ok(key) = std::env::var(&key_env) {
        config = config.with_api_key(Secret::new(key.into_bytes()));
    }
    let provider = OpenAiProvider::new(config)?;
    let request = ChatRequest::new(model, vec![ChatMessage::new(Role::User, prompt.join(" "))]);
    let print = |delta: &str| {
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(delta.as_bytes());
        let _ = stdout.flush();
    };
    let answer = provider.chat_streamed(request, &print).await?;
    println!();
    if let Some(usage) = answer.usage {
        eprintln!(
            "{}: {} prompt + {} completion tokens",
            answer.model, usage.prompt_tokens, usage.completion_tokens
        );
    }
    Ok(())
}
