//! One module per command; each fetches from the agent and renders with [`crate::output`].

use std::fmt;

use ciliate_client::Client;

use crate::cli::{
    BpfCommand, BpfPolicyCommand, Cli, Command, CtCommand, EndpointCommand, FqdnCacheCommand,
    FqdnCommand, IdentityCommand, LbCommand, ListOnly, MetricsCommand, PolicyCommand,
    ServiceCommand,
};
use crate::output::{self, Format};

pub mod apply;
pub mod bpf;
pub mod config;
pub mod connectivity;
pub mod endpoint;
pub mod fqdn;
pub mod identity;
pub mod install;
pub mod lab;
pub mod metrics;
pub mod monitor;
pub mod node;
pub mod observe;
pub mod policy;
pub mod service;
pub mod status;
pub mod ui;
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

/// An error that ends the command with an exit code of its own: `policy trace` exits 2 when
/// it cannot trace, since 1 means denied there.
#[derive(Debug)]
pub struct Coded {
    /// The exit code.
    pub code: u8,
    /// What went wrong.
    pub error: anyhow::Error,
}

impl fmt::Display for Coded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#}", self.error)
    }
}

impl std::error::Error for Coded {}

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
    let api_socket = cli.socket.clone();
    let ctx = Ctx {
        client: Client::new(cli.socket),
        format: cli.output.unwrap_or_default(),
    };
    match cli.command {
        Command::Status(args) => status::run(&ctx, &args).await,
        Command::Config => config::run(&ctx).await,
        Command::Metrics(MetricsCommand::List { match_pattern }) => {
            metrics::list(&ctx, match_pattern.as_deref()).await
        }
        Command::Completion { shell } => {
            // Into a buffer first: clap_complete panics when its writer fails, and a closed
            // pipe (`ciliate completion bash | head`) is an ordinary end (see `output::print`).
            let mut cmd = crate::cli::command();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd, "ciliate", &mut script);
            output::print(&String::from_utf8_lossy(&script))?;
            Ok(Outcome::Success)
        }
        Command::Endpoint(EndpointCommand::List) => endpoint::list(&ctx).await,
        Command::Endpoint(EndpointCommand::Get { reference }) => {
            endpoint::get(&ctx, &reference).await
        }
        Command::Fqdn(FqdnCommand::Cache(FqdnCacheCommand::List { matchpattern })) => {
            fqdn::list(&ctx, matchpattern.as_deref()).await
        }
        Command::Fqdn(FqdnCommand::Cache(FqdnCacheCommand::Clean { matchpattern })) => {
            fqdn::clean(&ctx, matchpattern.as_deref()).await
        }
        Command::Identity(IdentityCommand::List) => identity::list(&ctx).await,
        Command::Identity(IdentityCommand::Get { id }) => identity::get(&ctx, id).await,
        Command::Bpf(BpfCommand::Ct(CtCommand::List)) => bpf::ct_list(&ctx).await,
        Command::Bpf(BpfCommand::Lb(LbCommand::List)) => bpf::lb_list(&ctx).await,
        Command::Bpf(BpfCommand::Ipcache(ListOnly::List)) => bpf::ipcache_list(&ctx).await,
        Command::Bpf(BpfCommand::Endpoint(ListOnly::List)) => bpf::endpoint_list(&ctx).await,
        Command::Node(ListOnly::List) => node::list(&ctx).await,
        Command::Bpf(BpfCommand::Policy(BpfPolicyCommand::Get { endpoint })) => {
            bpf::policy_get(&ctx, &endpoint).await
        }
        Command::Policy(PolicyCommand::Import(args)) => policy::import(&ctx, &args.files).await,
        Command::Policy(PolicyCommand::Delete(args)) => {
            policy::delete(&ctx, &args.policies, &args.files, args.ignore_not_found).await
        }
        Command::Policy(PolicyCommand::Get { policy: p }) => policy::get(&ctx, p.as_deref()).await,
        Command::Policy(PolicyCommand::Validate(args)) => policy::validate(&ctx, &args.files).await,
        Command::Policy(PolicyCommand::Wait(args)) => {
            policy::wait(&ctx, args.revision, args.timeout).await
        }
        Command::Policy(PolicyCommand::Trace(args)) => policy::trace(&ctx, &args).await,
        Command::Policy(PolicyCommand::Whatif(args)) => policy::whatif(&ctx, &args).await,
        Command::Apply(args) => apply::run(&ctx, &args.files, false, false).await,
        Command::Delete(args) => apply::run(&ctx, &args.files, true, args.ignore_not_found).await,
        Command::Service(ServiceCommand::List) => service::list(&ctx).await,
        Command::Service(ServiceCommand::Get { name }) => service::get(&ctx, &name).await,
        Command::Monitor(args) => monitor::run(&ctx, args.kind, &args.related_to).await,
        Command::Observe(args) => observe::run(cli.output, *args, &api_socket).await,
        Command::Ui(args) => ui::run(args, &api_socket).await,
        Command::Version(args) => version::run(&ctx, args.client).await,
        Command::Lab(cmd) => lab::run(cmd, ctx.format).await,
        Command::Connectivity(cmd) => connectivity::run(cmd, ctx.format).await,
        Command::Install(args) => install::run(&args),
    }
}
