//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`, off by
//! default and never part of the API): what `exai connect` reads from its
//! editor and from the daemon.

use crate::bridge::{FromDaemon, Ledger};

/// Lines through the bridge's bookkeeping: a line starting with `>` comes
/// from the editor, one with `<` from the daemon, an empty one is the
/// connection dropping; an `!` line makes the bridge send a request of its
/// own. The bridge's own answers never reach the editor, and a dropped
/// connection leaves nothing in flight.
pub fn bridge_lines(data: &[u8]) {
    use serde_json::Value;
    let text = String::from_utf8_lossy(data);
    let mut ledger = Ledger::default();
    // The bridge's own requests not answered yet.
    let mut own = Vec::<Value>::new();
    for line in text.split('\n') {
        match line.as_bytes().first() {
            Some(b'>') => ledger.sending(&line[1..]),
            Some(b'<') => {
                let frame = &line[1..];
                let answers_own = serde_json::from_str::<Value>(frame).ok().and_then(|m| {
                    let answer = m.is_object() && m.get("method").is_none();
                    let id = m.get("id").filter(|_| answer)?;
                    let at = own.iter().position(|o| o == id)?;
                    Some(own.remove(at))
                });
                let seen = ledger.received(frame);
                if answers_own.is_some() {
                    assert!(
                        matches!(seen, FromDaemon::Own(_)),
                        "the answer to the bridge's own request went to the editor"
                    );
                }
            }
            Some(b'!') => {
                let request = ledger.own_request("auth/refresh", serde_json::json!({}));
                own.push(request["id"].clone());
            }
            None => {
                let _ = ledger.unanswered();
                own.clear();
                assert_eq!(ledger.in_flight(), 0);
            }
            Some(_) => {}
        }
    }
}
