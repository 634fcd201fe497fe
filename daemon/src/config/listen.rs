//! Where the daemon listens and whom it answers: the public address, the
//! operators' address, and the browser origins and host names `/mcp`
//! accepts.

use std::net::{IpAddr, SocketAddr};

use super::args::DaemonArgs;
use super::problems::{ConfigError, Problems, check_url, list, parse};

/// The listen section.
pub(super) struct Listen {
    pub(super) host: String,
    pub(super) port: u16,
    pub(super) admin: Option<SocketAddr>,
    pub(super) public_url: Option<String>,
    pub(super) allowed_origins: Vec<String>,
    pub(super) allowed_hosts: Option<Vec<String>>,
}

/// Reads the listen section. The host is always returned (the
/// authentication section checks it), with port 0 when the port is wrong.
pub(super) fn section(args: &DaemonArgs, problems: &mut Problems) -> Listen {
    let listen = args.listen.as_deref().and_then(|listen| {
        problems.check(parse("--listen", listen, "HOST:PORT", |_: &SocketAddr| {
            true
        }))
    });
    let port = problems.check(parse(
        "EXAI_WS_PORT",
        &args.port,
        "a port number (0-65535)",
        |_: &u16| true,
    ));
    if args.host.trim().is_empty() {
        problems.push(ConfigError::Invalid {
            variable: "EXAI_WS_HOST",
            value: args.host.clone(),
            expected: "a host name or IP address",
        });
    }
    let admin = args.admin_listen.as_deref().and_then(|admin| {
        problems.check(parse(
            "EXAI_ADMIN_LISTEN",
            admin,
            "HOST:PORT",
            |_: &SocketAddr| true,
        ))
    });
    let public_url = args
        .public_url
        .as_deref()
        .and_then(|url| problems.check(check_url("EXAI_PUBLIC_URL", url)));
    let allowed_origins = list(&args.allowed_origins);
    for origin in &allowed_origins {
        if origin != "*" && !origin.starts_with("http://") && !origin.starts_with("https://") {
            problems.push(ConfigError::Invalid {
                variable: "EXAI_ALLOWED_ORIGINS",
                value: origin.clone(),
                expected: "origins such as https://app.example.com, or *",
            });
        }
    }
    let (host, port) = match listen {
        Some(addr) => (addr.ip().to_string(), addr.port()),
        None => (args.host.clone(), port.unwrap_or_default()),
    };
    let allowed_hosts = allowed_hosts(&host, list(&args.allowed_hosts));
    Listen {
        host,
        port,
        admin,
        public_url,
        allowed_origins,
        allowed_hosts,
    }
}

/// The `Host` names `/mcp` answers to over HTTP: on a loopback listener the
/// loopback names (against DNS rebinding) and `extra`; elsewhere `extra`,
/// or any when none are given.
fn allowed_hosts(listen_host: &str, extra: Vec<String>) -> Option<Vec<String>> {
    if is_loopback(listen_host) {
        let mut hosts = vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ];
        hosts.extend(extra);
        Some(hosts)
    } else if extra.is_empty() {
        None
    } else {
        Some(extra)
    }
}

/// Whether `host` names the loopback interface.
pub(super) fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}
