//! `ciliate-cni`: the Ciliate CNI plugin (spec 1.0.0 and 1.1.0).
//!
//! The runtime runs it with `CNI_*` variables and the network configuration on stdin; it prints
//! the result (or an error object) on stdout and exits 0 (or 1). It wires the pod's veth pair
//! itself and asks the agent (over its unix socket) for the address, identity and datapath.
//!
//! ```text
//! CNI_COMMAND=ADD CNI_CONTAINERID=c1 CNI_NETNS=/var/run/netns/p CNI_IFNAME=eth0 \
//!   CNI_ARGS='K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0' ciliate-cni < /etc/cni/net.d/05-ciliate.conf
//! ```
//!
//! Set `CILIATE_CNI_LOG=/path/file` to append a debug log there (stdout is the runtime's).

#![forbid(unsafe_code)]

mod args;
mod commands;
mod config;
mod error;
mod log;
mod names;
mod result;

use std::io::Read;
use std::process::ExitCode;

use args::{Command, Env, Invocation, CILIATE_CNI_LOG};
use config::NetConf;
use error::{code, CniError};
use log::Log;
use result::{ErrorResult, VersionResult};

fn main() -> ExitCode {
    // Run by hand (`ciliate-cni --help`, `--version`, or with no CNI_COMMAND at a terminal),
    // say what this is, as the standard plugins do, instead of waiting for stdin.
    let first = std::env::args().nth(1);
    if matches!(
        first.as_deref(),
        Some("--help" | "-h" | "--version" | "-V" | "version")
    ) {
        println!("{}", about());
        return ExitCode::SUCCESS;
    }
    let mut input = Vec::new();
    let read = std::io::stdin().read_to_end(&mut input);
    let env = args::collect_env(std::env::vars_os());
    let mut log = Log::open(
        env.as_ref()
            .ok()
            .and_then(|e| e.get(CILIATE_CNI_LOG))
            .map(String::as_str),
    );

    let outcome = match (env, read) {
        (Err(e), _) => Err(e),
        (Ok(env), Ok(_)) => invoke(&env, &input, &mut log),
        (Ok(env), Err(e)) => match Command::from_env(&env) {
            // VERSION needs no input; every other command does.
            Ok(Command::Version) => invoke(&env, &[], &mut log),
            _ => Err(CniError::new(
                code::IO,
                format!("cannot read the network configuration from stdin: {e}"),
                "",
            )),
        },
    };
    match outcome {
        Ok(stdout) => {
            log.line("ok");
            if let Some(out) = stdout {
                println!("{out}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            log.line(format_args!("error: {e}"));
            let version = config::answer_version(&input);
            let body =
                serde_json::to_string(&ErrorResult::new(&version, &e)).unwrap_or_else(|_| {
                    format!(
                        r#"{{"cniVersion":"{version}","code":{},"msg":"error"}}"#,
                        e.code
                    )
                });
            println!("{body}");
            ExitCode::FAILURE
        }
    }
}

/// One invocation: environment and stdin in, what to print out. Everything is validated before
/// the first kernel or agent call.
fn invoke(env: &Env, input: &[u8], log: &mut Log) -> Result<Option<String>, CniError> {
    let command = Command::from_env(env)?;
    log.set_context(command.as_str());
    if command == Command::Version {
        return to_json(&VersionResult::ours()).map(Some);
    }
    let conf = NetConf::parse(input)?;
    let invocation = match command {
        Command::Add | Command::Del | Command::Check => {
            let inv = Invocation::from_env(command, env)?;
            log.set_context(format_args!(
                "{} {}/{}",
                command.as_str(),
                inv.container_id,
                inv.ifname
            ));
            Some(inv)
        }
        _ => None,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CniError::new(code::IO, format!("cannot start the async runtime: {e}"), ""))?;
    let log = &*log;
    runtime.block_on(async {
        match (command, &invocation) {
            (Command::Add, Some(inv)) => {
                let result = commands::add::run(inv, &conf, log).await?;
                to_json(&result).map(Some)
            }
            (Command::Del, Some(inv)) => commands::del::run(inv, &conf, log).await.map(|()| None),
            (Command::Check, Some(inv)) => commands::check::run(inv, &conf).await.map(|()| None),
            (Command::Status, _) => commands::status::run(&conf).await.map(|()| None),
            (Command::Gc, _) => commands::gc::run(&conf, log).await.map(|()| None),
            // VERSION returned above; ADD, DEL and CHECK always have an invocation.
            _ => Ok(None),
        }
    })
}

fn to_json(v: &impl serde::Serialize) -> Result<String, CniError> {
    serde_json::to_string(v)
        .map_err(|e| CniError::new(code::IO, format!("cannot encode the result: {e}"), ""))
}

/// The plugin's name, version and the CNI spec versions it speaks.
fn about() -> String {
    format!(
        "CNI ciliate plugin v{}\nCNI protocol versions supported: {}\n\n\
         Run by a container runtime with CNI_COMMAND (ADD, DEL, CHECK, STATUS, GC, VERSION) \
         and the network configuration on stdin; see the README.",
        env!("CARGO_PKG_VERSION"),
        result::SUPPORTED_VERSIONS.join(", ")
    )
}
