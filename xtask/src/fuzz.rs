//! `cargo xtask fuzz`: the fuzz targets of `fuzz/` under libFuzzer, by
//! `cargo fuzz` on the stable toolchain (`RUSTC_BOOTSTRAP=1`, no
//! sanitizer: the code is `unsafe`-free, so coverage-guided search for
//! panics, overflows and hangs is what is wanted). `cargo fuzz` itself is
//! installed under `target/test-tools/` on first use.
//!
//! - `cargo xtask fuzz [--secs N] [--runs R] [target…]`: each target for N
//!   seconds (600 by default), or until R inputs have run, from its committed corpus in `fuzz/corpus/`, which
//!   grows with what it finds and is then minimized (`cargo fuzz cmin`);
//!   its runs and crashes are written into
//!   `RELIABILITY.md` with the machine and date. A crash fails the task and
//!   leaves its input under `fuzz/artifacts/`.
//! - [`smoke`], from `cargo xtask test`: every target over its corpus and
//!   a few thousand new inputs, so a target that no longer builds or a
//!   corpus input that now crashes fails the gate.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

/// Every target in `fuzz/fuzz_targets/`.
pub(crate) const TARGETS: [&str; 7] = [
    "ws_frame",
    "http_request",
    "jwt",
    "api_key",
    "provider_sse",
    "env_file",
    "bridge_lines",
];

/// The version of `cargo-fuzz` installed for the tasks.
const CARGO_FUZZ: &str = "0.13.2";

/// `cargo xtask fuzz [--secs N] [--runs R] [target…]`.
pub(crate) fn run(root: &Path, args: &[String]) -> anyhow::Result<()> {
    let mut secs = 600u64;
    let mut runs = None;
    let mut targets = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--secs" => {
                let value = args.next().context("--secs needs a number of seconds")?;
                secs = value
                    .parse()
                    .with_context(|| format!("--secs {value}: not a number of seconds"))?;
            }
            "--runs" => {
                let value = args.next().context("--runs needs a number of inputs")?;
                let value: u64 = value
                    .parse()
                    .with_context(|| format!("--runs {value}: not a number of inputs"))?;
                runs = Some(value);
            }
            name if TARGETS.contains(&name) => targets.push(name),
            other => bail!(
                "unknown fuzz target or option '{other}' (targets: {}; options: --secs N, --runs R)",
                TARGETS.join(", ")
            ),
        }
    }
    if targets.is_empty() {
        targets = TARGETS.to_vec();
    }
    let cargo_fuzz = cargo_fuzz(root)?;
    build(root, &cargo_fuzz)?;
    let path = root.join("RELIABILITY.md");
    for target in targets {
        match runs {
            Some(runs) => eprintln!("xtask: fuzzing {target} for {runs} inputs or {secs} s"),
            None => eprintln!("xtask: fuzzing {target} for {secs} s"),
        }
        let corpus = root.join("fuzz/corpus").join(target);
        std::fs::create_dir_all(&corpus)?;
        let stats = libfuzzer(
            root,
            &cargo_fuzz,
            target,
            std::slice::from_ref(&corpus),
            &[
                format!("-max_total_time={secs}"),
                format!("-runs={}", runs.map_or(-1, |runs| runs as i64)),
            ],
        )?;
        minimize(root, &cargo_fuzz, target)?;
        let inputs = std::fs::read_dir(&corpus)?.count();
        let line = format!(
            "- `{target}`: {} runs in {} s ({}/s), 0 crashes, corpus of {inputs} inputs; {}\n",
            thousands(stats.runs),
            stats.secs,
            thousands(stats.runs / stats.secs.max(1)),
            crate::machine(),
        );
        eprint!("{line}");
        let document = std::fs::read_to_string(&path).unwrap_or_default();
        std::fs::write(
            &path,
            crate::splice(&document, &format!("fuzz:{target}"), &line),
        )?;
    }
    eprintln!("xtask: wrote {}", path.display());
    Ok(())
}

/// Every target over its committed corpus plus `runs` new inputs; what it
/// finds goes to `target/fuzz-smoke/`, not into the corpus.
pub(crate) fn smoke(root: &Path, runs: u64) -> anyhow::Result<()> {
    let cargo_fuzz = cargo_fuzz(root)?;
    build(root, &cargo_fuzz)?;
    for target in TARGETS {
        let scratch = root.join("target/fuzz-smoke").join(target);
        std::fs::create_dir_all(&scratch)?;
        let corpus = root.join("fuzz/corpus").join(target);
        // libFuzzer counts the corpus it loads among its runs.
        let inputs = std::fs::read_dir(&corpus)
            .with_context(|| format!("reading {}", corpus.display()))?
            .count() as u64;
        let stats = libfuzzer(
            root,
            &cargo_fuzz,
            target,
            &[scratch, corpus],
            &[format!("-runs={}", inputs + runs)],
        )
        .with_context(|| format!("the fuzz target {target} failed its smoke run"))?;
        eprintln!(
            "xtask: fuzz target {target}: {} runs ({inputs} from its corpus), no crash",
            stats.runs
        );
    }
    Ok(())
}

/// What libFuzzer said of a run.
struct Stats {
    runs: u64,
    secs: u64,
}

/// Runs `target` over `corpora` (new inputs go to the first) within `limits`.
fn libfuzzer(
    root: &Path,
    cargo_fuzz: &Path,
    target: &str,
    corpora: &[PathBuf],
    limits: &[String],
) -> anyhow::Result<Stats> {
    let output = Command::new(cargo_fuzz)
        .args(["fuzz", "run", "--sanitizer", "none", target])
        .args(corpora)
        .arg("--")
        .args(limits)
        .args(["-print_final_stats=1", "-rss_limit_mb=4096"])
        .args(["-timeout=10", "-max_len=65536"])
        .env("RUSTC_BOOTSTRAP", "1")
        .current_dir(root.join("fuzz"))
        .output()
        .with_context(|| format!("running cargo fuzz for {target}"))?;
    let log = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!(
            "the fuzz target {target} failed ({}):\n{}",
            output.status,
            tail.join("\n")
        );
    }
    // libFuzzer's last words: "Done 12345 runs in 60 second(s)".
    let done = log
        .lines()
        .filter_map(|l| l.strip_prefix("Done "))
        .next_back()
        .context("libFuzzer did not say how many runs it made")?;
    let number = |word: Option<&str>| word.and_then(|w| w.parse::<u64>().ok());
    let mut words = done.split(' ');
    let runs = number(words.next()).context("libFuzzer's run count")?;
    let secs = number(words.nth(2)).context("libFuzzer's duration")?;
    Ok(Stats { runs, secs })
}

/// Shrinks `target`'s corpus to the inputs that cover what it all covers
/// (`cargo fuzz cmin`), so that what is committed stays small.
fn minimize(root: &Path, cargo_fuzz: &Path, target: &str) -> anyhow::Result<()> {
    let output = Command::new(cargo_fuzz)
        .args(["fuzz", "cmin", "--sanitizer", "none", target])
        .env("RUSTC_BOOTSTRAP", "1")
        .current_dir(root.join("fuzz"))
        .output()
        .with_context(|| format!("running cargo fuzz cmin for {target}"))?;
    if !output.status.success() {
        bail!(
            "minimizing the corpus of {target} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// Builds every target once, so the runs time fuzzing, not compiling.
fn build(root: &Path, cargo_fuzz: &Path) -> anyhow::Result<()> {
    eprintln!("xtask: building the fuzz targets");
    let status = Command::new(cargo_fuzz)
        .args(["fuzz", "build", "--sanitizer", "none"])
        .env("RUSTC_BOOTSTRAP", "1")
        .current_dir(root.join("fuzz"))
        .status()
        .context("running cargo fuzz build")?;
    if !status.success() {
        bail!("cargo fuzz build exited with {status}");
    }
    Ok(())
}

/// `cargo-fuzz`, installed under `target/test-tools/cargo-fuzz` once.
fn cargo_fuzz(root: &Path) -> anyhow::Result<PathBuf> {
    let home = root.join("target/test-tools/cargo-fuzz");
    let binary = home.join("bin/cargo-fuzz");
    if binary.exists() {
        return Ok(binary);
    }
    eprintln!(
        "xtask: installing cargo-fuzz {CARGO_FUZZ} into {}",
        home.display()
    );
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "install",
            "cargo-fuzz",
            "--locked",
            "--version",
            CARGO_FUZZ,
            "--root",
        ])
        .arg(&home)
        .status()
        .context("running cargo install cargo-fuzz")?;
    if !status.success() {
        bail!("installing cargo-fuzz exited with {status}");
    }
    Ok(binary)
}

/// 12345678 as `12,345,678`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
