//! The tools there are: name, description, input schema, and what each
//! does (for the model-backed ones, the system prompt that makes the tool).
//! Adding a tool that asks a model is adding an entry here.

use serde_json::{Value, json};

/// A tool's public description and what it does.
pub(crate) struct ToolSpec {
    pub(crate) name: &'static str,
    pub(crate) description: &'static str,
    pub(crate) input_schema: fn() -> Value,
    pub(crate) kind: Kind,
}

/// What a tool does when called.
#[derive(Clone, Copy)]
pub(crate) enum Kind {
    /// The caller's identity and session.
    Whoami,
    /// The daemon's state and the caller's own: sessions, usage, limits.
    Status,
    /// The caller's own sessions.
    Sessions,
    /// Asks several models, then has one combine their answers.
    Consensus,
    /// The models the daemon can ask, and the default.
    ListModels,
    /// The daemon's name and version.
    Version,
    /// Asks a model, with this system prompt (none for `chat`).
    Ask(Option<&'static str>),
}

fn no_arguments() -> Value {
    json!({ "type": "object", "properties": {} })
}

fn prompt_and_model() -> Value {
    json!({
        "type": "object",
        "properties": {
            "prompt": { "type": "string", "description": "The question, code or plan to work on." },
            "model": {
                "type": "string",
                "description": "Model to ask (default: the daemon's DEFAULT_MODEL; see listmodels)."
            },
            "continuation_id": {
                "type": "string",
                "description": "Continue an earlier conversation: the continuation_id a previous \
                                answer gave. Leave it out to start a new one."
            }
        },
        "required": ["prompt"]
    })
}

fn consensus_arguments() -> Value {
    json!({
        "type": "object",
        "properties": {
            "prompt": { "type": "string", "description": "The question or proposal to weigh." },
            "models": {
                "type": "array",
                "items": { "type": "string" },
                "minItems": 1,
                "description": "Models to ask, each once (default: one model of each provider; \
                                see listmodels)."
            },
            "model": {
                "type": "string",
                "description": "Model that combines the answers (default: DEFAULT_MODEL)."
            }
        },
        "required": ["prompt"]
    })
}

/// The system prompt of each model `consensus` asks.
pub(crate) const CONSENSUS_VOICE: &str = "You are one of several independent experts asked the same \
    question. Answer it on your own merits: your position, the reasons for it, and how sure you \
    are. Be brief and concrete.";

/// The system prompt of the model that combines the answers.
pub(crate) const CONSENSUS_JUDGE: &str = "You are given a question and the answers of several \
    independent models. Combine them: where they agree, where they disagree and why, which \
    arguments are strongest, and a final recommendation. Do not invent positions none of them took.";

/// The tools, in the order `tools/list` shows them.
pub(crate) const TOOLS: &[ToolSpec] = &[
    ToolSpec {
        name: "chat",
        description: "Ask a model a question and get its answer.",
        input_schema: prompt_and_model,
        kind: Kind::Ask(None),
    },
    ToolSpec {
        name: "thinkdeep",
        description: "Think a hard problem through step by step: assumptions, alternatives, risks, a conclusion.",
        input_schema: prompt_and_model,
        kind: Kind::Ask(Some(
            "You are a careful senior engineer thinking a hard problem through. State the \
             assumptions you make, weigh at least two alternatives, name the risks of each, and \
             end with a clear recommendation and what would change your mind. Be concrete; do not pad.",
        )),
    },
    ToolSpec {
        name: "analyze",
        description: "Analyze code or a design: structure, dependencies, strengths, weaknesses.",
        input_schema: prompt_and_model,
        kind: Kind::Ask(Some(
            "You analyze code and designs. Describe the structure and the main flows, the \
             dependencies, what is done well, and what is weak or risky, ordered by impact. Quote \
             the parts you refer to. Say what you could not judge from what you were given.",
        )),
    },
    ToolSpec {
        name: "codereview",
        description: "Review code like a demanding colleague: bugs, security, clarity, tests.",
        input_schema: prompt_and_model,
        kind: Kind::Ask(Some(
            "You are doing a code review. List real problems first, most severe first: bugs, \
             security issues, data loss, races, missing error handling, then clarity and tests. \
             For each, point at the code, say why it matters and how to fix it. Do not praise \
             what is merely ordinary; say so plainly if the code is fine.",
        )),
    },
    ToolSpec {
        name: "debug",
        description: "Find the cause of a bug from symptoms, logs and code.",
        input_schema: prompt_and_model,
        kind: Kind::Ask(Some(
            "You help find the root cause of a bug. From the symptoms, logs and code given, list \
             the likely causes ranked by likelihood, the evidence for each, and the quickest \
             experiment that would confirm or rule it out. Do not guess beyond the evidence.",
        )),
    },
    ToolSpec {
        name: "planner",
        description: "Break a goal into an ordered plan of small, checkable steps.",
        input_schema: prompt_and_model,
        kind: Kind::Ask(Some(
            "You turn a goal into a plan: small ordered steps, each with what it produces and how \
             to check it is done, the dependencies between steps, and the open questions to settle \
             first. Keep it as short as the goal allows.",
        )),
    },
    ToolSpec {
        name: "challenge",
        description: "Challenge a statement or decision: the strongest case against it.",
        input_schema: prompt_and_model,
        kind: Kind::Ask(Some(
            "You are asked to challenge what follows, not to agree with it. Give the strongest \
             honest case against it: wrong assumptions, overlooked costs, better alternatives. Then \
             say whether it survives the challenge.",
        )),
    },
    ToolSpec {
        name: "consensus",
        description: "Ask several models the same question, then have one combine their answers: \
                      agreements, disagreements, a recommendation.",
        input_schema: consensus_arguments,
        kind: Kind::Consensus,
    },
    ToolSpec {
        name: "listmodels",
        description: "The models this daemon can ask, by provider, and the default one.",
        input_schema: no_arguments,
        kind: Kind::ListModels,
    },
    ToolSpec {
        name: "version",
        description: "This daemon's name and version.",
        input_schema: no_arguments,
        kind: Kind::Version,
    },
    ToolSpec {
        name: "status",
        description: "The daemon's state and your own: your sessions, your usage of each model, \
                      your limits.",
        input_schema: no_arguments,
        kind: Kind::Status,
    },
    ToolSpec {
        name: "whoami",
        description: "Who this connection acts for: user id, email and MCP session id.",
        input_schema: no_arguments,
        kind: Kind::Whoami,
    },
    ToolSpec {
        name: "sessions",
        description: "Your own MCP sessions: id, state, transport, client, when opened and last active.",
        input_schema: no_arguments,
        kind: Kind::Sessions,
    },
];

pub(crate) fn spec(name: &str) -> Option<&'static ToolSpec> {
    TOOLS.iter().find(|t| t.name == name)
}

/// The names of every tool there is.
pub(crate) fn tool_names() -> impl Iterator<Item = &'static str> {
    TOOLS.iter().map(|t| t.name)
}
