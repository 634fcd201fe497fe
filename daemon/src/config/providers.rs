//! The model providers: Kimi, GLM and one OpenAI-compatible API from their
//! variables (`KIMI_*`, `GLM_*`, `OPENAI_*`), more from
//! `EXAI_PROVIDERS_FILE`, and the default model, which one of them (or the
//! offline `echo`) must serve.
//!
//! The providers file is TOML:
//!
//! ```toml
//! [[providers]]
//! name = "openrouter"                        # how logs, metrics and listmodels call it
//! base_url = "https://openrouter.ai/api/v1"
//! api_key_env = "OPENROUTER_API_KEY"         # the variable holding its key (never the key)
//! models = ["qwen/qwen3-coder", "deepseek/deepseek-chat"]
//! max_concurrency = 4                        # optional (default 8)
//! timeout_secs = 120                         # optional, per attempt (default 120)
//! ```
//!
//! Keys stay in the environment: the file names the variable, so it can be
//! committed and shared. A key inside the file is refused, and no problem
//! this module reports quotes the file's text.

use std::path::Path;
use std::time::Duration;

use exai_auth::Secret;
use exai_providers::OpenAiConfig;
use serde::Deserialize;

use super::args::DaemonArgs;
use super::env::Strings;
use super::problems::{ConfigError, Problems, check_url, list};

/// The model providers configured, and the default model.
pub(super) fn section(
    args: &DaemonArgs,
    env: &dyn Strings,
    problems: &mut Problems,
) -> (Vec<OpenAiConfig>, String) {
    let secret = |value: &Option<String>| {
        value
            .as_deref()
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(|v| Secret::new(v.as_bytes().to_vec()))
    };
    let url = |problems: &mut Problems, variable, value: &Option<String>| {
        value
            .as_deref()
            .filter(|v| !v.trim().is_empty())
            .and_then(|v| problems.check(check_url(variable, v.trim())))
    };
    let mut providers = Vec::new();
    let kimi_url = url(problems, "KIMI_API_URL", &args.kimi_api_url);
    if let Some(key) = secret(&args.kimi_api_key) {
        providers.push(OpenAiConfig::kimi(key, kimi_url));
    }
    let glm_url = url(problems, "GLM_API_URL", &args.glm_api_url);
    let glm = secret(&args.glm_api_key).map(|key| OpenAiConfig::glm(key, glm_url));
    let glm_configured = glm.is_some();
    providers.extend(glm);
    let openai_url = url(problems, "OPENAI_BASE_URL", &args.openai_base_url);
    let openai_key = secret(&args.openai_api_key);
    if openai_url.is_some() || openai_key.is_some() {
        let models = list(&args.openai_models);
        if models.is_empty() {
            problems.push(ConfigError::MissingOpenAiModels);
        }
        let base = openai_url.unwrap_or_else(|| "https://api.openai.com/v1".to_owned());
        let mut config = OpenAiConfig::new("openai", base, models);
        if let Some(key) = openai_key {
            config = config.with_api_key(key);
        }
        providers.push(config);
    }
    if let Some(path) = &args.providers_file {
        match load(path, env) {
            Ok(listed) => providers.extend(listed),
            Err(listed) => {
                for problem in listed {
                    problems.push(ConfigError::ProvidersFile {
                        path: path.display().to_string(),
                        problem,
                    });
                }
            }
        }
    }
    let default_model = match args.default_model.as_deref().map(str::trim) {
        Some(model) if !model.is_empty() => model.to_owned(),
        _ if glm_configured => exai_providers::GLM_DEFAULT_MODEL.to_owned(),
        _ => exai_providers::EchoProvider::MODEL.to_owned(),
    };
    let served = std::iter::once(exai_providers::EchoProvider::MODEL.to_owned())
        .chain(providers.iter().flat_map(|p| p.models.iter().cloned()))
        .collect::<Vec<_>>();
    if !served.contains(&default_model) {
        problems.push(ConfigError::UnservedDefaultModel(
            default_model.clone(),
            served.join(", "),
        ));
    }
    (providers, default_model)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProvidersFile {
    #[serde(default)]
    providers: Vec<Entry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    base_url: String,
    api_key_env: Option<String>,
    models: Vec<String>,
    max_concurrency: Option<usize>,
    timeout_secs: Option<u64>,
}

/// Reads the providers in `path`; `env` resolves each `api_key_env`.
/// Every problem is returned, each naming the provider it is about.
fn load(path: &Path, env: &dyn Strings) -> Result<Vec<OpenAiConfig>, Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| vec![format!("cannot read it: {e}")])?;
    parse(&text, env)
}

fn parse(text: &str, env: &dyn Strings) -> Result<Vec<OpenAiConfig>, Vec<String>> {
    let file: ProvidersFile = toml::from_str(text).map_err(|e| {
        // The message only: toml's full rendering quotes the line, which
        // could hold a key someone pasted.
        let line = e
            .span()
            .map(|span| text[..span.start].matches('\n').count() + 1);
        vec![match line {
            Some(line) => format!("line {line}: {}", e.message()),
            None => e.message().to_owned(),
        }]
    })?;
    let mut problems = Vec::new();
    let mut providers = Vec::new();
    let mut names: Vec<&str> = vec!["echo", "kimi", "glm", "openai"];
    for entry in &file.providers {
        let name = entry.name.trim();
        let said = |problem: String| format!("provider '{name}': {problem}");
        if name.is_empty() {
            problems.push("a provider without a name".to_owned());
            continue;
        }
        if names.contains(&name) {
            problems.push(said(
                "the name is taken (echo, kimi, glm and openai are built in)".into(),
            ));
        }
        names.push(name);
        if let Err(e) = check_url("base_url", entry.base_url.trim()) {
            problems.push(said(e.to_string()));
        }
        if entry.models.is_empty() || entry.models.iter().any(|m| m.trim().is_empty()) {
            problems.push(said(
                "models must name at least one model, none empty".into(),
            ));
        }
        if entry.max_concurrency == Some(0) {
            problems.push(said("max_concurrency must be at least 1".into()));
        }
        if entry.timeout_secs == Some(0) {
            problems.push(said("timeout_secs must be at least 1".into()));
        }
        let key = match entry.api_key_env.as_deref().map(str::trim) {
            None => None,
            Some(variable) => match env.get(variable).filter(|k| !k.trim().is_empty()) {
                Some(key) => Some(Secret::new(key.trim().as_bytes().to_vec())),
                None => {
                    problems.push(said(format!(
                        "api_key_env names {variable}, which is not set"
                    )));
                    None
                }
            },
        };
        let models = entry.models.iter().map(|m| m.trim().to_owned()).collect();
        let mut config = OpenAiConfig::new(name, entry.base_url.trim(), models);
        if let Some(key) = key {
            config = config.with_api_key(key);
        }
        if let Some(max) = entry.max_concurrency {
            config.max_concurrency = max;
        }
        if let Some(secs) = entry.timeout_secs {
            config.timeout = Duration::from_secs(secs);
        }
        providers.push(config);
    }
    if problems.is_empty() {
        Ok(providers)
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENV: [(&str, &str); 1] = [("ROUTER_KEY", "sk-router-secret")];

    #[test]
    fn providers_come_with_their_keys_from_the_environment() {
        let text = r#"
            [[providers]]
            name = "router"
            base_url = "https://router.example/v1"
            api_key_env = "ROUTER_KEY"
            models = ["m-1", "m-2"]
            max_concurrency = 3
            timeout_secs = 30

            [[providers]]
            name = "local"
            base_url = "http://127.0.0.1:8080/v1"
            models = ["llama"]
        "#;
        let providers = parse(text, &ENV).unwrap();
        assert_eq!(providers.len(), 2);
        let router = &providers[0];
        assert_eq!(router.name, "router");
        assert_eq!(router.models, ["m-1", "m-2"]);
        assert_eq!(router.max_concurrency, 3);
        assert_eq!(router.timeout, Duration::from_secs(30));
        assert_eq!(
            router.api_key.as_ref().map(|k| k.expose().to_vec()),
            Some(b"sk-router-secret".to_vec())
        );
        assert!(providers[1].api_key.is_none());
    }

    #[test]
    fn every_problem_is_named_and_no_key_is_quoted() {
        let text = r#"
            [[providers]]
            name = "glm"
            base_url = "ftp://nowhere"
            api_key_env = "UNSET_KEY"
            models = []
            max_concurrency = 0
        "#;
        let problems = parse(text, &ENV).unwrap_err();
        assert_eq!(problems.len(), 5, "{problems:?}");
        assert!(problems.iter().all(|p| p.starts_with("provider 'glm': ")));
        assert!(
            problems
                .iter()
                .any(|p| p.contains("UNSET_KEY, which is not set"))
        );

        let inline = "[[providers]]\nname = \"x\"\nbase_url = \"https://x/v1\"\nmodels = [\"m\"]\napi_key = \"sk-pasted-secret\"\n";
        let problems = parse(inline, &ENV).unwrap_err();
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].starts_with("line 5: unknown field `api_key`"),
            "{problems:?}"
        );
        assert!(!problems[0].contains("sk-pasted-secret"));
    }
}
