//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`, off by
//! default and never part of the API): what a provider's server sends,
//! parsed exactly as an answer from the network is.

use std::sync::OnceLock;

use crate::{ChatMessage, ChatRequest, OpenAiConfig, OpenAiProvider, Role};

/// A streamed answer: `data` after its first byte, cut into reads of the
/// size that byte gives (1 to 64 bytes), as a socket may deliver it. An
/// answer only after `data: [DONE]`, and its text only what the deltas
/// said; anything else a typed error.
pub fn sse(data: &[u8]) {
    static PROVIDER: OnceLock<OpenAiProvider> = OnceLock::new();
    let provider = PROVIDER.get_or_init(|| {
        let config = OpenAiConfig::new("fuzz", "http://127.0.0.1:9", vec!["m".into()]);
        OpenAiProvider::new(config).expect("a provider")
    });
    let Some((&cut, body)) = data.split_first() else {
        return;
    };
    let reads = body
        .chunks(usize::from(cut % 64) + 1)
        .map(|chunk| Ok::<_, std::io::Error>(bytes::Bytes::copy_from_slice(chunk)));
    let request = ChatRequest::new("m", vec![ChatMessage::new(Role::User, "hello")]);
    let streamed = std::sync::Mutex::new(String::new());
    let on_delta = |delta: &str| streamed.lock().expect("not poisoned").push_str(delta);
    let answer = futures::executor::block_on(provider.read_stream(
        futures::stream::iter(reads),
        &request,
        &on_delta,
    ));
    if let Ok(answer) = answer {
        assert!(
            body.windows(6).any(|w| w == b"[DONE]"),
            "an answer without [DONE]"
        );
        assert_eq!(answer.content, *streamed.lock().expect("not poisoned"));
    }
}
