//! Where the bridge's access token comes from: a token given on the
//! command line (`--token`, `EXAI_TOKEN`) or an API key, used as they are,
//! or the stored sign-in of `exai login`, refreshed before it expires.

use std::path::PathBuf;
use std::time::Duration;

use crate::{CommandError, signin};

/// Where the bridge's access token comes from.
pub(crate) enum Credential {
    /// `EXAI_TOKEN` or `EXAI_API_KEY`: used as is, never refreshed.
    Fixed(String),
    /// The sign-in `exai login` stored, refreshed through Supabase Auth when
    /// the project (URL and anon key) is known.
    SignedIn {
        /// `SUPABASE_URL` and `SUPABASE_ANON_KEY`.
        project: Option<(String, String)>,
        /// Where the session file lives.
        config_dir: PathBuf,
    },
}

/// A token and, when it can be refreshed, when it expires (Unix seconds).
pub(crate) struct Token {
    pub(super) value: String,
    pub(super) refreshable_until: Option<u64>,
}

impl Credential {
    /// The current token, refreshed first if less than `margin` is left.
    pub(super) async fn fresh(&self, margin: Duration) -> Result<Token, CommandError> {
        match self {
            Credential::Fixed(token) => Ok(Token {
                value: token.clone(),
                refreshable_until: None,
            }),
            Credential::SignedIn {
                project,
                config_dir,
            } => {
                let project = project
                    .as_ref()
                    .map(|(url, anon_key)| signin::Project { url, anon_key });
                let stored = signin::current_within(project.as_ref(), config_dir, margin)
                    .await?
                    .ok_or_else(|| {
                        CommandError::SignIn(
                            "not signed in: run exai login, or set EXAI_TOKEN or EXAI_API_KEY"
                                .into(),
                        )
                    })?;
                Ok(Token {
                    value: stored.access_token,
                    refreshable_until: project.is_some().then_some(stored.expires_at),
                })
            }
        }
    }
}
