//! A throwaway PostgreSQL server per test, from the PostgreSQL binaries on
//! the machine. (Not an existing server: tests stop and restart their own
//! server to make outages, and expect a database nobody else has touched.)
//!
//! `initdb` runs once, into a template data directory kept under
//! `target/test-tools/`; each [`TestPostgres`] copies it and starts its own
//! server on a free port, so a
//! test may stop and restart its server (an outage) without touching any
//! other. Dropping it stops the server and removes the directory. As root,
//! the server runs as the `postgres` system user, because PostgreSQL refuses
//! to run as root.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Where the PostgreSQL binaries are: `EXAI_TEST_PG_BIN` (set by
/// `cargo xtask test`), `pg_ctl` on the PATH, or `/usr/lib/postgresql/*/bin`.
fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("EXAI_TEST_PG_BIN") {
        return PathBuf::from(dir);
    }
    if let Ok(output) = Command::new("sh")
        .args(["-c", "command -v pg_ctl"])
        .output()
        && output.status.success()
    {
        let path = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        // Through any symlink (`/usr/local/bin/pg_ctl`), to the directory
        // that also holds `initdb` and `psql`.
        let path = std::fs::canonicalize(&path).unwrap_or_else(|_| PathBuf::from(&path));
        if let Some(parent) = path.parent() {
            return parent.to_owned();
        }
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path().join("bin"))
        .filter(|bin| bin.join("pg_ctl").exists())
        .collect();
    found.sort();
    found.pop().unwrap_or_else(|| {
        panic!(
            "no PostgreSQL server binaries found (pg_ctl, initdb): install them \
             (Debian: apt-get install postgresql) or set EXAI_TEST_PG_BIN"
        )
    })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Runs a PostgreSQL program, as the `postgres` user when we are root.
fn pg(program: &str) -> Command {
    let path = bin_dir().join(program);
    if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(path);
        command
    } else {
        Command::new(path)
    }
}

fn run(mut command: Command, what: &str) {
    let output = command.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        output.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A directory the server's user owns, in `parent` (the system's temporary
/// directory when `None`).
fn owned_dir(prefix: &str, parent: Option<&Path>) -> tempfile::TempDir {
    let builder = tempfile::Builder::new().prefix(prefix).to_owned();
    let dir = match parent {
        Some(parent) => builder.tempdir_in(parent),
        None => builder.tempdir(),
    }
    .unwrap();
    if is_root() {
        let mut chown = Command::new("chown");
        chown.args(["-R", "postgres:postgres"]).arg(dir.path());
        run(chown, "chown");
    }
    dir
}

/// The template cluster, made once per machine (per PostgreSQL version) and
/// kept in `target/test-tools/`. Made in a temporary directory and renamed
/// into place, so concurrent test binaries never see half of one.
fn template() -> &'static Path {
    static TEMPLATE: OnceLock<PathBuf> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let tools = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-tools");
        std::fs::create_dir_all(&tools).unwrap();
        let version = Command::new(bin_dir().join("pg_ctl"))
            .arg("--version")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|v| v.split_whitespace().last().map(str::to_owned))
            .map(|v| {
                v.chars()
                    .filter(|c| c.is_ascii_alphanumeric() || *c == '.')
                    .collect::<String>()
            })
            .unwrap_or_else(|| "unknown".into());
        let template = tools.join(format!("pg-template-{version}"));
        if template.join("data/PG_VERSION").exists() {
            return template;
        }
        let fresh = owned_dir("pg-template-new-", Some(&tools));
        let mut initdb = pg("initdb");
        initdb
            .args([
                "--auth=trust",
                "--username=postgres",
                "--encoding=UTF8",
                "--no-sync",
                "-D",
            ])
            .arg(fresh.path().join("data"));
        run(initdb, "initdb");
        let fresh = fresh.keep();
        if std::fs::rename(&fresh, &template).is_err() {
            // Another test binary got there first; theirs is as good.
            let _ = std::fs::remove_dir_all(&fresh);
        }
        template
    })
}

/// What every Supabase project's database has before exai first migrates
/// it: the API roles, and default privileges granting them everything on
/// each new table, sequence and function in `public` (Supabase's own
/// initial schema does this), so that a table exai creates is open to
/// `anon` and `authenticated` until exai's migrations revoke it, exactly
/// as on a hosted project. `auth.users` and `auth.uid()` come from the
/// bootstrap migration, which Supabase projects skip.
const SUPABASE_DEFAULTS: &str = "
    CREATE ROLE anon NOLOGIN NOINHERIT;
    CREATE ROLE authenticated NOLOGIN NOINHERIT;
    CREATE ROLE service_role NOLOGIN NOINHERIT BYPASSRLS;
    GRANT USAGE ON SCHEMA public TO anon, authenticated, service_role;
    ALTER DEFAULT PRIVILEGES FOR ROLE postgres IN SCHEMA public
      GRANT ALL ON TABLES TO anon, authenticated, service_role;
    ALTER DEFAULT PRIVILEGES FOR ROLE postgres IN SCHEMA public
      GRANT ALL ON SEQUENCES TO anon, authenticated, service_role;
    ALTER DEFAULT PRIVILEGES FOR ROLE postgres IN SCHEMA public
      GRANT ALL ON FUNCTIONS TO anon, authenticated, service_role;
";

/// One PostgreSQL server, stopped and removed on drop.
pub struct TestPostgres {
    dir: tempfile::TempDir,
    port: u16,
    /// `postgres://postgres@127.0.0.1:PORT/postgres`
    pub url: String,
}

impl TestPostgres {
    /// A fresh server.
    pub fn start() -> TestPostgres {
        let dir = owned_dir("exai-pg-", None);
        let mut copy = Command::new("cp");
        copy.arg("-a").arg(template().join("data")).arg(dir.path());
        run(copy, "copying the template cluster");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let server = TestPostgres {
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            dir,
            port,
        };
        server.resume();
        server.psql(SUPABASE_DEFAULTS);
        server
    }

    /// Runs `sql` as the `postgres` superuser, through `psql`.
    fn psql(&self, sql: &str) {
        let mut psql = pg("psql");
        psql.args(["-v", "ON_ERROR_STOP=1", "-q", "-h"])
            .arg(self.dir.path())
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            .args(["-c", sql]);
        run(psql, "psql");
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Starts the server (again), waiting until it accepts connections.
    pub fn resume(&self) {
        let dir = self.dir.path();
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off",
            self.port,
            dir.display()
        );
        let mut start = pg("pg_ctl");
        start
            .args(["start", "-w", "-t", "60", "-D"])
            .arg(self.data())
            .args(["-l"])
            .arg(dir.join("server.log"))
            .args(["-o", &options]);
        run(start, "pg_ctl start");
    }

    /// Stops the server at once (an outage).
    pub fn halt(&self) {
        let mut stop = pg("pg_ctl");
        stop.args(["stop", "-m", "immediate", "-w", "-D"])
            .arg(self.data());
        run(stop, "pg_ctl stop");
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        let mut stop = pg("pg_ctl");
        stop.args(["stop", "-m", "immediate", "-D"])
            .arg(self.data());
        let _ = stop.output();
    }
}
