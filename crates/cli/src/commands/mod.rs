//! One module per command; each fetches from the agent and renders with [`crate::output`].

use std::fmt;

use ciliate_client::Client;

use crate::cli::{
    BpfCommand, Cli, Command, CtCommand, EndpointCommand, IdentityCommand, LbCommand,
    ServiceCommand,
};
use crate::output::Format;

pub mod apply;
pub mod bpf;
pub mod endpoint;
pub mod identity;
pub mod monitor;
pub mod service;
pub mod status;
pub mod version;

/// What every command needs: where the agent is and how to print.
#[derive(Debug)]
pub struct Ctx {
    /// The agent's API client.
    pub client: Client,
    /// The output format from `-o`.
    pub format: Format,
}

/// How a command that did not fail ended; `main` turns it into the exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Exit 0.
    Success,
    /// Exit 1 without an error message: the output already says what is wrong (a degraded
    /// agent in `ciliate status`).
    Unhealthy,
}

/// An error with advice on what to do next, which `main` prints on its own `Hint:` line.
#[derive(Debug)]
pub struct Hinted {
    /// What went wrong.
    pub error: anyhow::Error,
    /// What to try.
    pub hint: String,
}

impl fmt::Display for Hinted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#}", self.error)
    }
}

impl std::error::Error for Hinted {}

/// Attaches `hint` to a "not found" answer from the agent; other errors pass unchanged,
/// since their messages already say what to do.
pub fn hint_not_found(err: ciliate_client::ClientError, hint: &str) -> anyhow::Error {
    if err.status() == Some(404) {
        Hinted {
            error: err.into(),
            hint: hint.to_owned(),
        }
        .into()
    } else {
        err.into()
    }
}

/// Runs the command the user asked for.
pub async fn run(cli: Cli) -> anyhow::Result<Outcome> {
    let ctx = Ctx {
        client: Client::new(cli.socket),
        format: cli.output,
    };
    match cli.command {
        Command::Status => status::run(&ctx).await,
        Command::Endpoint(EndpointCommand::List) => endpoint::list(&ctx).await,
        Command::Endpoint(EndpointCommand::Get { reference }) => {
            endpoint::get(&ctx, &reference).await
        }
        Command::Identity(IdentityCommand::List) => identity::list(&ctx).await,
        Command::Identity(IdentityCommand::Get { id }) => identity::get(&ctx, id).await,
        Command::Bpf(BpfCommand::Ct(CtCommand::List)) => bpf::ct_list(&ctx).await,
        Command::Bpf(BpfCommand::Lb(LbCommand::List)) => bpf::lb_list(&ctx).await,
        Command::Apply(args) => apply::run(&ctx, &args.files, false, false).await,
        Command::Delete(args) => apply::run(&ctx, &args.files, true, args.ignore_not_found).await,
        Command::Service(ServiceCommand::List) => service::list(&ctx).await,
        Command::Service(ServiceCommand::Get { name }) => service::get(&ctx, &name).await,
        Command::Monitor(args) => monitor::run(&ctx, args.kind).await,
        Command::Version(args) => version::run(&ctx, args.client).await,
    }
}
