//! `cargo xtask`: the project's automation, in Rust so it runs wherever
//! cargo does.
//!
//! - `cargo xtask bench`: the measurements of `tests/bench/`, in release
//!   mode, written to `BENCHMARKS.md` with the machine and date.
//! - `cargo xtask test`: the gate CI runs — formatting, the tidy check
//!   (every Rust file opens with a `//!` comment saying what it is for),
//!   clippy with warnings as errors, `cargo doc` with warnings as errors,
//!   the test tools (two Python virtual
//!   environments under `target/test-tools/`, with the packages of
//!   `tests/tools/requirements.txt` and `requirements-mcp2.txt`, and the
//!   Node packages of `tests/tools/node/`; PostgreSQL's server binaries,
//!   which it finds and names to the tests),
//!   every test in the workspace, and a smoke run of every fuzz target.
//! - `cargo xtask fuzz [--secs N] [--runs R] [target…]`: the fuzz targets of `fuzz/`
//!   ([`fuzz`]), their figures written to `RELIABILITY.md`.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context as _, bail};

mod fuzz;

fn main() -> ExitCode {
    match run(std::env::args().skip(1).collect()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("xtask: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Vec<String>) -> anyhow::Result<()> {
    let root = workspace_root();
    match args.first().map(String::as_str) {
        Some("test") => test(&root, &args[1..]),
        Some("bench") => bench(&root, &args[1..]),
        Some("fuzz") => fuzz::run(&root, &args[1..]),
        Some("help" | "--help" | "-h") | None => {
            eprintln!(
                "usage: cargo xtask test [<extra cargo test args>]\n       cargo xtask bench [auth|sessions|transport|fairness|soak|abuse]...\n       cargo xtask fuzz [--secs N] [--runs R] [target]..."
            );
            Ok(())
        }
        Some(other) => bail!("unknown task '{other}' (try: cargo xtask help)"),
    }
}

/// Formatting, lints, then every test of the workspace.
fn test(root: &Path, extra: &[String]) -> anyhow::Result<()> {
    cargo(root, &["fmt", "--all", "--check"])
        .context("formatting differs: run `cargo fmt --all`")?;
    tidy(root)?;
    cargo(
        root,
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
    )
    .context("clippy found problems")?;
    // The libraries' API documentation builds without a warning (broken
    // links, private items named in public docs); their examples are built
    // and their doctests run with the tests below.
    cargo_with_env(
        root,
        &["doc", "--workspace", "--no-deps"],
        &[("RUSTDOCFLAGS", std::ffi::OsStr::new("-D warnings"))],
    )
    .context("the API documentation has problems")?;
    let tools = test_tools(root)?;
    let postgres = postgres_bin()?;
    let mut args = vec!["test", "--workspace"];
    args.extend(extra.iter().map(String::as_str));
    let [python, python_mcp2, python_mcp112, node_modules] = tools.env();
    cargo_with_env(
        root,
        &args,
        &[
            python,
            python_mcp2,
            python_mcp112,
            node_modules,
            ("EXAI_TEST_PG_BIN", postgres.as_os_str()),
        ],
    )
    .context("tests failed")?;
    fuzz::smoke(root, 4000)?;
    Ok(())
}

/// The directory of the PostgreSQL server binaries the tests start their
/// throwaway servers with. No PostgreSQL is a failure, never a skip.
fn postgres_bin() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("EXAI_TEST_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path().join("bin"))
        .filter(|bin| bin.join("initdb").exists() && bin.join("pg_ctl").exists())
        .collect();
    found.sort();
    found.pop().context(
        "the tests need PostgreSQL's server binaries (initdb, pg_ctl) and none were found \
         in /usr/lib/postgresql/*/bin: install them (Debian: apt-get install postgresql) \
         or point EXAI_TEST_PG_BIN at their directory",
    )
}

/// Runs the benchmarks in release mode and writes `BENCHMARKS.md`, with
/// the machine and the date; the reliability runs, only when named, write
/// `RELIABILITY.md`.
fn bench(root: &Path, only: &[String]) -> anyhow::Result<()> {
    const SECTIONS: [&str; 4] = ["auth", "sessions", "transport", "fairness"];
    const RELIABILITY: [&str; 2] = ["soak", "abuse"];
    if let Some(unknown) = only
        .iter()
        .find(|s| !SECTIONS.contains(&s.as_str()) && !RELIABILITY.contains(&s.as_str()))
    {
        bail!(
            "unknown benchmark section '{unknown}': {}, {}",
            SECTIONS.join(", "),
            RELIABILITY.join(", ")
        );
    }
    let tools = test_tools(root)?;
    cargo(
        root,
        &[
            "build",
            "--release",
            "--package",
            "exai-tests",
            "--bin",
            "exai-bench",
            "--package",
            "exai-daemon",
            "--bin",
            "exai-daemon",
        ],
    )?;
    let postgres = postgres_bin()?;
    let section = |name: &str| -> anyhow::Result<String> {
        eprintln!("xtask: running exai-bench {name}");
        let output = Command::new(root.join("target/release/exai-bench"))
            .arg(name)
            .envs(tools.env())
            .env("EXAI_TEST_PG_BIN", &postgres)
            .env("EXAI_BENCH_DAEMON", root.join("target/release/exai-daemon"))
            .output()
            .context("running exai-bench")?;
        if !output.status.success() {
            bail!(
                "exai-bench {name} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        String::from_utf8(output.stdout).context("exai-bench output")
    };
    let machine = machine();
    let runs = [
        ("BENCHMARKS.md", &SECTIONS[..], only.is_empty()),
        ("RELIABILITY.md", &RELIABILITY[..], false),
    ];
    for (file, sections, all) in runs {
        let path = root.join(file);
        let mut document = std::fs::read_to_string(&path).unwrap_or_default();
        let mut wrote = false;
        for name in sections {
            if !all && !only.iter().any(|s| s == name) {
                continue;
            }
            let table = section(name)?;
            let generated = format!("- {machine}\n\n{table}");
            eprintln!("{generated}");
            document = splice(&document, &format!("bench:{name}"), &generated);
            wrote = true;
        }
        if wrote {
            std::fs::write(&path, document)?;
            eprintln!("xtask: wrote {}", path.display());
        }
    }
    Ok(())
}

/// When and where figures were taken: the date, the CPU and its cores,
/// the kernel and the toolchain.
fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let date = command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]);
    let kernel = command_output("uname", &["-sr"]);
    let rustc = command_output("rustc", &["--version"]);
    format!("{date}, {cpu}, {cores} cores, {kernel}, {rustc}")
}

/// Replaces what stands between `<!-- NAME -->` and `<!-- /NAME -->` in
/// `document` (appending the section if missing),
/// so the prose around the figures is kept.
fn splice(document: &str, name: &str, generated: &str) -> String {
    let (open, close) = (format!("<!-- {name} -->"), format!("<!-- /{name} -->"));
    let section = format!("{open}\n{generated}{close}");
    match (document.find(&open), document.find(&close)) {
        (Some(start), Some(end)) if start < end => {
            format!(
                "{}{section}{}",
                &document[..start],
                &document[end + close.len()..]
            )
        }
        _ => format!("{document}\n{section}\n"),
    }
}

fn command_output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|| "unknown".into())
}

/// The Pythons the tests use, each in a virtual environment under
/// `target/test-tools/` with pinned packages: `venv` from
/// `tests/tools/requirements.txt` (the tools, and the MCP Python SDK 1.x)
/// and `venv-mcp2` from `tests/tools/requirements-mcp2.txt` (the SDK 2.x,
/// which cannot share an environment with 1.x).
/// And `node/node_modules`, from `tests/tools/node/package-lock.json`: the
/// MCP TypeScript SDK.
struct TestTools {
    python: PathBuf,
    python_mcp2: PathBuf,
    python_mcp112: PathBuf,
    node_modules: PathBuf,
}

impl TestTools {
    fn env(&self) -> [(&'static str, &std::ffi::OsStr); 4] {
        [
            ("EXAI_TEST_PYTHON", self.python.as_os_str()),
            ("EXAI_TEST_PYTHON_MCP2", self.python_mcp2.as_os_str()),
            ("EXAI_TEST_PYTHON_MCP112", self.python_mcp112.as_os_str()),
            ("EXAI_TEST_NODE_MODULES", self.node_modules.as_os_str()),
        ]
    }
}

fn test_tools(root: &Path) -> anyhow::Result<TestTools> {
    Ok(TestTools {
        python: venv(root, "venv", "requirements.txt")?,
        python_mcp2: venv(root, "venv-mcp2", "requirements-mcp2.txt")?,
        python_mcp112: venv(root, "venv-mcp112", "requirements-mcp112.txt")?,
        node_modules: node_packages(root)?,
    })
}

/// `target/test-tools/node/node_modules`, installed with `npm ci` from the
/// package files in `tests/tools/node/`; again only when they change.
fn node_packages(root: &Path) -> anyhow::Result<PathBuf> {
    let source = root.join("tests/tools/node");
    let target = root.join("target/test-tools/node");
    let files = ["package.json", "package-lock.json"];
    let mut wanted = String::new();
    for file in files {
        wanted += &std::fs::read_to_string(source.join(file))
            .with_context(|| format!("reading tests/tools/node/{file}"))?;
    }
    let stamp = target.join("exai-packages.txt");
    let modules = target.join("node_modules");
    if modules.exists() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str())
    {
        return Ok(modules);
    }
    eprintln!(
        "xtask: installing the Node test packages into {}",
        target.display()
    );
    std::fs::create_dir_all(&target)?;
    for file in files {
        std::fs::copy(source.join(file), target.join(file))?;
    }
    run_tool(
        Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&target),
    )
    .context("installing the Node test packages (are node and npm installed?)")?;
    std::fs::write(&stamp, wanted)?;
    Ok(modules)
}

/// The virtual environment `target/test-tools/<name>` with the packages of
/// `tests/tools/<requirements>`; made once, and again only when the
/// requirements change. Returns its Python.
fn venv(root: &Path, name: &str, requirements: &str) -> anyhow::Result<PathBuf> {
    let venv = root.join("target/test-tools").join(name);
    let python = venv.join("bin/python");
    let requirements = root.join("tests/tools").join(requirements);
    let wanted = std::fs::read_to_string(&requirements)
        .with_context(|| format!("reading {}", requirements.display()))?;
    let stamp = venv.join("exai-requirements.txt");
    if python.exists() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) {
        return Ok(python);
    }
    eprintln!("xtask: installing the test tools into {}", venv.display());
    run_tool(
        Command::new("python3")
            .args(["-m", "venv", "--clear"])
            .arg(&venv),
    )
    .context("creating the Python virtual environment (is python3 with venv installed?)")?;
    run_tool(
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "-r",
            ])
            .arg(&requirements),
    )
    .context("installing the Python test packages")?;
    std::fs::write(&stamp, wanted)?;
    Ok(python)
}

fn run_tool(command: &mut Command) -> anyhow::Result<()> {
    let status = command
        .status()
        .with_context(|| format!("could not run {command:?}"))?;
    if !status.success() {
        bail!("{command:?} exited with {status}");
    }
    Ok(())
}

/// Every Rust file of the workspace starts with a `//!` comment.
fn tidy(root: &Path) -> anyhow::Result<()> {
    eprintln!("xtask: tidy");
    let mut missing = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?
        {
            let path = entry?.path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            if path.is_dir() {
                if !name.starts_with('.') && name != "target" && name != "node_modules" {
                    stack.push(path);
                }
            } else if name.ends_with(".rs") {
                let text = std::fs::read_to_string(&path)?;
                let first = text
                    .lines()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or_default();
                if !first.starts_with("//!") {
                    missing.push(
                        path.strip_prefix(root)
                            .unwrap_or(&path)
                            .display()
                            .to_string(),
                    );
                }
            }
        }
    }
    if !missing.is_empty() {
        missing.sort();
        bail!(
            "these files do not open with a `//!` comment saying what they are for:\n  {}",
            missing.join("\n  ")
        );
    }
    Ok(())
}

fn cargo(root: &Path, args: &[&str]) -> anyhow::Result<()> {
    cargo_with_env(root, args, &[])
}

fn cargo_with_env(
    root: &Path,
    args: &[&str],
    env: &[(&str, &std::ffi::OsStr)],
) -> anyhow::Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("xtask: cargo {}", args.join(" "));
    let status = Command::new(&cargo)
        .args(args)
        .envs(env.iter().copied())
        .current_dir(root)
        .status()
        .with_context(|| format!("could not run cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} exited with {status}", args.join(" "));
    }
    Ok(())
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_owned()
}
