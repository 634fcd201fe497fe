//! The providers a daemon can ask, routed by model name, and the presets
//! for Kimi and GLM.

use std::collections::HashMap;
use std::sync::Arc;

use exai_auth::Secret;

use crate::{EchoProvider, OpenAiConfig, Provider};

/// Kimi (Moonshot AI): where it is and what it serves.
pub const KIMI_URL: &str = "https://api.moonshot.ai/v1";
/// Kimi's models.
pub const KIMI_MODELS: &[&str] = &[
    "kimi-k2-0905-preview",
    "kimi-k2-turbo-preview",
    "kimi-k2-thinking",
];
/// GLM (Z.ai): where it is and what it serves.
pub const GLM_URL: &str = "https://api.z.ai/api/paas/v4";
/// GLM's models.
pub const GLM_MODELS: &[&str] = &["glm-4.6", "glm-4.5", "glm-4.5-flash", "glm-4.5-air"];
/// The default model when GLM is configured.
pub const GLM_DEFAULT_MODEL: &str = "glm-4.5-flash";

impl OpenAiConfig {
    /// Kimi at `url` (default [`KIMI_URL`]) with `key`: its models, 6 calls
    /// at once.
    pub fn kimi(key: Secret, url: Option<String>) -> Self {
        Self::preset(
            "kimi",
            url.as_deref().unwrap_or(KIMI_URL),
            KIMI_MODELS,
            6,
            key,
        )
    }

    /// GLM at `url` (default [`GLM_URL`]) with `key`: its models, 4 calls at
    /// once.
    pub fn glm(key: Secret, url: Option<String>) -> Self {
        Self::preset("glm", url.as_deref().unwrap_or(GLM_URL), GLM_MODELS, 4, key)
    }

    fn preset(name: &str, url: &str, models: &[&str], max_concurrency: usize, key: Secret) -> Self {
        let models = models.iter().map(|m| (*m).to_owned()).collect();
        let mut config = OpenAiConfig::new(name, url, models).with_api_key(key);
        config.max_concurrency = max_concurrency;
        config
    }
}

/// Every provider, and the model asked when a call names none.
#[derive(Debug, Clone)]
pub struct Providers {
    providers: Vec<Arc<dyn Provider>>,
    /// Each model's provider (an index into `providers`), built once: a
    /// model served twice goes to the first provider that lists it.
    routes: HashMap<String, usize>,
    default_model: String,
}

/// A model no provider serves.
#[derive(Debug, thiserror::Error)]
#[error("no provider serves the default model '{0}'")]
pub struct UnservedDefault(pub String);

impl Providers {
    /// `providers`, after the offline `echo`; calls that name no model ask
    /// `default_model` (which one of them must serve).
    pub fn new(
        providers: Vec<Arc<dyn Provider>>,
        default_model: impl Into<String>,
    ) -> Result<Self, UnservedDefault> {
        let mut all: Vec<Arc<dyn Provider>> = vec![Arc::new(EchoProvider::default())];
        all.extend(providers);
        Self::with_echo(all, default_model)
    }

    /// Like [`Providers::new`], with the first provider as the offline one
    /// (an [`EchoProvider`] configured by the caller).
    pub fn with_echo(
        providers: Vec<Arc<dyn Provider>>,
        default_model: impl Into<String>,
    ) -> Result<Self, UnservedDefault> {
        let mut routes = HashMap::new();
        for (index, provider) in providers.iter().enumerate() {
            for model in provider.models() {
                routes.entry(model).or_insert(index);
            }
        }
        let providers = Providers {
            providers,
            routes,
            default_model: default_model.into(),
        };
        if providers.route(&providers.default_model).is_none() {
            return Err(UnservedDefault(providers.default_model));
        }
        Ok(providers)
    }

    /// The provider that serves `model`.
    pub fn route(&self, model: &str) -> Option<&Arc<dyn Provider>> {
        self.routes.get(model).map(|&index| &self.providers[index])
    }

    /// The model asked when a call names none.
    pub fn default_model(&self) -> &str {
        &self.default_model
    }

    /// Every provider, the offline one first.
    pub fn all(&self) -> &[Arc<dyn Provider>] {
        &self.providers
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::OpenAiProvider;

    #[test]
    fn models_route_to_their_provider_and_the_default_must_be_served() {
        let glm = OpenAiProvider::new(OpenAiConfig::glm(Secret::new(b"k".to_vec()), None)).unwrap();
        let providers = Providers::new(vec![Arc::new(glm)], GLM_DEFAULT_MODEL).unwrap();
        assert_eq!(providers.route("glm-4.6").unwrap().name(), "glm");
        assert_eq!(providers.route("echo").unwrap().name(), "echo");
        assert!(providers.route("kimi-k2-thinking").is_none());
        assert_eq!(providers.default_model(), "glm-4.5-flash");
        let unserved = Providers::new(Vec::new(), "glm-4.6").unwrap_err();
        assert_eq!(
            unserved.to_string(),
            "no provider serves the default model 'glm-4.6'"
        );
    }

    #[test]
    fn presets() {
        let kimi = OpenAiConfig::kimi(Secret::new(b"k".to_vec()), None);
        assert_eq!(kimi.base_url, "https://api.moonshot.ai/v1");
        assert_eq!(kimi.max_concurrency, 6);
        let glm = OpenAiConfig::glm(Secret::new(b"k".to_vec()), Some("http://h/v4/".into()));
        assert_eq!(glm.base_url, "http://h/v4");
        assert_eq!(glm.max_concurrency, 4);
    }
}
