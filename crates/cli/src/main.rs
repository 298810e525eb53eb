//! `ciliate`: the command line of the Ciliate agent.
//!
//! This file only parses, runs and maps the result to an exit code: 0 success, 1 failure
//! (unreachable or unhealthy agent, not found, any error), 2 usage error (clap's own).
//! `policy trace` is the exception: 0 allowed, 1 denied, 2 could not trace.

#![forbid(unsafe_code)]

use std::process::ExitCode;

mod cli;
mod commands;
#[cfg(test)]
mod fixtures;
mod jsonpath;
mod output;

use commands::{Coded, Hinted, Outcome};

/// `apply -f` of a large file is mostly the YAML parser's many small allocations and frees;
/// mimalloc makes them cheaper than glibc's malloc (the CLI's memory is not kept: it exits).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    // Usage errors exit 2 and --help/--version exit 0, both inside clap.
    let cli = cli::parse();
    match commands::run(cli).await {
        Ok(Outcome::Success) => ExitCode::SUCCESS,
        Ok(Outcome::Unhealthy) => ExitCode::FAILURE,
        // The reader went away (`| head`): they have what they wanted.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}", report(&e));
            match e.downcast_ref::<Coded>() {
                Some(c) => ExitCode::from(c.code),
                None => ExitCode::FAILURE,
            }
        }
    }
}

/// `Error: <message>`, and a `Hint:` line when there is advice to give.
fn report(e: &anyhow::Error) -> String {
    if let Some(c) = e.downcast_ref::<Coded>() {
        return report(&c.error);
    }
    if let Some(h) = e.downcast_ref::<Hinted>() {
        return format!("Error: {}\nHint: {}", message(&h.error), h.hint);
    }
    let hint = match e.downcast_ref::<ciliate_client::ClientError>() {
        Some(ciliate_client::ClientError::Timeout { .. }) => Some(
            "the agent may be overloaded or stuck; its logs say more (journalctl -u ciliate-agent)",
        ),
        _ => None,
    };
    match hint {
        Some(hint) => format!("Error: {}\nHint: {hint}", message(e)),
        None => format!("Error: {}", message(e)),
    }
}

/// The error and its causes joined by `: `, skipping a cause whose text the message already
/// carries (the client's errors quote their `io::Error` themselves).
fn message(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.is_empty() {
            out = text;
        } else if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
    }
    out
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.downcast_ref::<std::io::Error>()
        .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hinted_errors_print_two_lines() {
        let e: anyhow::Error = Hinted {
            error: anyhow::anyhow!("no endpoint \"x\""),
            hint: "try `ciliate endpoint list`".into(),
        }
        .into();
        assert_eq!(
            report(&e),
            "Error: no endpoint \"x\"\nHint: try `ciliate endpoint list`"
        );
        assert_eq!(report(&anyhow::anyhow!("boom")), "Error: boom");
    }

    #[test]
    fn causes_are_not_repeated() {
        let unreachable = ciliate_client::ClientError::Unreachable {
            socket: "/x.sock".into(),
            source: std::io::Error::other("gone"),
        };
        let e = anyhow::Error::from(unreachable).context("status");
        assert_eq!(
            report(&e),
            "Error: status: cannot reach the agent at /x.sock: gone \
             (is ciliate-agent running? set --socket or CILIATE_SOCKET)"
        );
    }

    #[test]
    fn broken_pipe_is_recognised() {
        let e: anyhow::Error = std::io::Error::from(std::io::ErrorKind::BrokenPipe).into();
        assert!(is_broken_pipe(&e));
        assert!(!is_broken_pipe(&anyhow::anyhow!("boom")));
    }
}
