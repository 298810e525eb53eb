//! The command line, as clap types. Help texts live here so `--help` is the manual.

use std::path::PathBuf;

use ciliate_model::api::DEFAULT_SOCKET;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::output::Format;

/// `ciliate`: look at and into the Ciliate agent of this node.
#[derive(Debug, Parser)]
#[command(
    name = "ciliate",
    version,
    about = "Inspect the Ciliate agent and datapath of this node",
    long_about = "Inspect the Ciliate agent and datapath of this node.\n\n\
        ciliate talks to the agent over its unix socket (--socket, or CILIATE_SOCKET). \
        Listings print a table by default; -o json and -o yaml print the agent's API objects \
        unchanged, for scripts.\n\n\
        Exit codes: 0 success, 1 failure (agent unreachable or unhealthy, object not found, \
        any other error), 2 usage error.",
    after_help = "Examples:\n  \
        ciliate status\n  \
        ciliate endpoint list\n  \
        ciliate endpoint get default/web\n  \
        ciliate monitor --type drop\n  \
        CILIATE_SOCKET=/tmp/agent.sock ciliate identity list -o json",
    after_long_help = "Examples:\n  \
        ciliate status                        # is the agent healthy? (exit code 0/1)\n  \
        ciliate endpoint list                 # the pods this node serves\n  \
        ciliate endpoint get default/web      # one endpoint, by id, container id or ns/pod\n  \
        ciliate identity list -o json         # identities, as the API returns them\n  \
        ciliate bpf ct list                   # the connection-tracking table\n  \
        ciliate apply -f examples/services/   # Services and EndpointSlices, kubectl-style\n  \
        ciliate service list                  # Services, their frontends and backends\n  \
        ciliate bpf lb list                   # the load-balancing maps, raw\n  \
        ciliate monitor --type drop           # follow drops until Ctrl-C\n  \
        ciliate --socket /tmp/agent.sock status"
)]
pub struct Cli {
    /// The agent's API socket.
    #[arg(
        long,
        global = true,
        env = "CILIATE_SOCKET",
        default_value = DEFAULT_SOCKET,
        value_name = "PATH"
    )]
    pub socket: PathBuf,

    /// Output format: a table for people, or the API object as json or yaml.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Format::Table, value_name = "FORMAT")]
    pub output: Format,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show the agent's health, datapath, endpoints, identities and IPAM
    #[command(
        long_about = "Show the agent's health, datapath, endpoints, identities and IPAM.\n\n\
            Exit code 0 when the agent reports itself healthy, 1 when it is degraded (the \
            problems are listed) or cannot be reached. Scripts and probes can rely on it.",
        after_help = "Examples:\n  \
            ciliate status\n  \
            ciliate status -o json | jq .ipam\n  \
            until ciliate status >/dev/null 2>&1; do sleep 1; done   # wait for a healthy agent"
    )]
    Status,

    /// List and inspect endpoints (one per pod interface)
    #[command(
        subcommand,
        long_about = "List and inspect endpoints.\n\n\
            An endpoint is one pod interface wired by the CNI plugin: its address, identity, \
            labels and the host side of its veth pair.",
        after_help = "Examples:\n  \
            ciliate endpoint list\n  \
            ciliate endpoint get 1234\n  \
            ciliate endpoint get default/web -o yaml"
    )]
    Endpoint(EndpointCommand),

    /// List and inspect security identities
    #[command(
        subcommand,
        long_about = "List and inspect security identities.\n\n\
            An identity is the number the datapath carries for a set of labels: reserved \
            ones (1 host, 2 world, ...) and one per distinct pod label set, from 256 up.",
        after_help = "Examples:\n  \
            ciliate identity list\n  \
            ciliate identity get 256"
    )]
    Identity(IdentityCommand),

    /// Look into the datapath's BPF maps
    #[command(
        subcommand,
        long_about = "Look into the datapath's BPF maps, as the agent reads them.\n\n\
            bpftool may not show TCX links or decode our maps; these commands do.",
        after_help = "Examples:\n  \
            ciliate bpf ct list\n  \
            ciliate bpf lb list"
    )]
    Bpf(BpfCommand),

    /// Apply Kubernetes Services, EndpointSlices and Endpoints from manifests
    #[command(
        long_about = "Apply Kubernetes Service, EndpointSlice and Endpoints objects, kubectl-style.\n\n\
            -f takes a file, a directory (its *.yaml, *.yml and *.json files, in name order) or - \
            for standard input, and may be repeated; files hold one or more YAML documents \
            separated by ---, or JSON. All documents form one batch: the agent checks every \
            one, and if any is invalid it applies nothing and every problem is listed with its \
            file, document, field and reason (exit code 1). An applied object replaces the one \
            of the same kind, namespace and name.\n\n\
            Prints one line per object: service/web created, endpointslice/web-abc configured, \
            ... unchanged.",
        after_help = "Examples:\n  \
            ciliate apply -f web.yaml\n  \
            ciliate apply -f examples/services/\n  \
            kubectl get svc,endpointslices -o yaml | ciliate apply -f -\n  \
            ciliate apply -f svc.yaml -f slices/ -o json"
    )]
    Apply(ApplyArgs),

    /// Delete the objects named in manifests
    #[command(
        long_about = "Delete the Service, EndpointSlice and Endpoints objects the manifests name \
            (kind, namespace and name; the rest of each document is not checked).\n\n\
            -f works as for apply. Prints service/web deleted per object; an object that does \
            not exist is an error (exit code 1) unless --ignore-not-found is given.",
        after_help = "Examples:\n  \
            ciliate delete -f web.yaml\n  \
            ciliate delete -f examples/services/ --ignore-not-found"
    )]
    Delete(DeleteArgs),

    /// List and inspect Services, their frontends and backends
    #[command(
        subcommand,
        long_about = "List and inspect Services as the agent balances them: each frontend (cluster \
            IP, external IP, node port, load-balancer address with port and protocol) and the \
            backends behind it with their state (active, or terminating: no new connections \
            unless none is active).",
        after_help = "Examples:\n  \
            ciliate service list\n  \
            ciliate service get default/web\n  \
            ciliate service list -o json | jq '.[].frontends[].backends'"
    )]
    Service(ServiceCommand),

    /// Follow datapath events (drops, traces) until Ctrl-C
    #[command(
        long_about = "Follow datapath events (drops, traces) as they happen, one per line, \
            until Ctrl-C.\n\n\
            With -o json each event is one JSON object per line (NDJSON), ready for jq. \
            Exits 0 on Ctrl-C or a closed pipe, 1 when the agent cannot be reached or ends \
            the stream.",
        after_help = "Examples:\n  \
            ciliate monitor\n  \
            ciliate monitor --type drop\n  \
            ciliate monitor -o json | jq 'select(.endpoint == 1234)'"
    )]
    Monitor(MonitorArgs),

    /// Print the client's version, and the agent's when it is reachable
    #[command(
        long_about = "Print the client's version, and the agent's.\n\n\
            Exits 1 when the agent cannot be reached (the client's version is still \
            printed); --client asks only for the client's and never fails.",
        after_help = "Examples:\n  \
            ciliate version\n  \
            ciliate version --client -o json"
    )]
    Version(VersionArgs),
}

/// `ciliate endpoint ...`
#[derive(Debug, Subcommand)]
pub enum EndpointCommand {
    /// List the endpoints of this node
    #[command(
        visible_alias = "ls",
        long_about = "List the endpoints of this node: ENDPOINT ID, POD, IPV4, IDENTITY, \
            LABELS, STATE.",
        after_help = "Examples:\n  \
            ciliate endpoint list\n  \
            ciliate endpoint list -o json | jq -r '.[].ipv4'"
    )]
    List,

    /// Show one endpoint in full
    #[command(
        long_about = "Show one endpoint in full: addresses, interfaces, identity, labels, \
            state.\n\n\
            REFERENCE is the endpoint id, the container id, or namespace/pod.",
        after_help = "Examples:\n  \
            ciliate endpoint get 1234\n  \
            ciliate endpoint get 9f1c2d...\n  \
            ciliate endpoint get kube-system/coredns-0 -o yaml"
    )]
    Get {
        /// Endpoint id, container id, or namespace/pod.
        #[arg(value_name = "REFERENCE")]
        reference: String,
    },
}

/// `ciliate identity ...`
#[derive(Debug, Subcommand)]
pub enum IdentityCommand {
    /// List the identities known on this node
    #[command(
        visible_alias = "ls",
        long_about = "List the identities known on this node, reserved ones included: ID, \
            LABELS, RESERVED, REFS (endpoints of this node using it).",
        after_help = "Examples:\n  \
            ciliate identity list\n  \
            ciliate identity list -o yaml"
    )]
    List,

    /// Show one identity
    #[command(
        long_about = "Show one identity: its labels, whether it is reserved, and how many \
            endpoints of this node use it.",
        after_help = "Examples:\n  \
            ciliate identity get 2\n  \
            ciliate identity get 256 -o json"
    )]
    Get {
        /// The numeric identity.
        id: u32,
    },
}

/// `ciliate bpf ...`
#[derive(Debug, Subcommand)]
pub enum BpfCommand {
    /// The connection-tracking map
    #[command(
        subcommand,
        long_about = "The connection-tracking map: one entry per connection the datapath \
            tracks.",
        after_help = "Examples:\n  \
            ciliate bpf ct list"
    )]
    Ct(CtCommand),

    /// The load-balancing maps
    #[command(
        subcommand,
        long_about = "The load-balancing maps: frontends with their backend slots, backends and \
            reverse-NAT indexes, read back from the datapath.",
        after_help = "Examples:\n  \
            ciliate bpf lb list"
    )]
    Lb(LbCommand),
}

/// `ciliate bpf lb ...`
#[derive(Debug, Subcommand)]
pub enum LbCommand {
    /// List frontends, their slots and backends
    #[command(
        visible_alias = "ls",
        long_about = "List the load-balancing maps as the datapath holds them: FRONTEND \
            (address:port/protocol), REV-NAT (its reverse-NAT index), SERVICE, FLAGS (affinity) \
            and SLOTS (slot => backend address, id and state). Backends in no slot (terminating \
            ones kept for their connections) are listed last with FRONTEND <none>.",
        after_help = "Examples:\n  \
            ciliate bpf lb list\n  \
            ciliate bpf lb list -o json | jq '.backends | length'"
    )]
    List,
}

/// `ciliate service ...`
#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// List the Services
    #[command(
        visible_alias = "ls",
        long_about = "List the Services, one row per frontend: ID (the frontend's reverse-NAT \
            index), SERVICE (namespace/name), TYPE, FRONTEND and BACKENDS with their state. \
            Headless and ExternalName Services have no frontend.",
        after_help = "Examples:\n  \
            ciliate service list\n  \
            ciliate service list -o yaml"
    )]
    List,

    /// Show one Service in full
    #[command(
        long_about = "Show one Service: type, cluster IP, affinity, where it came from, every \
            frontend with its backends, and what keeps it from working (no endpoints, a port \
            no EndpointSlice serves, a frontend another Service holds).\n\n\
            NAME is namespace/name, or a name in the default namespace.",
        after_help = "Examples:\n  \
            ciliate service get default/web\n  \
            ciliate service get web -o json"
    )]
    Get {
        /// namespace/name, or a name in the default namespace.
        #[arg(value_name = "NAME")]
        name: String,
    },
}

/// Arguments of `ciliate apply`.
#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// A manifest file, a directory of them, or - for standard input; repeatable.
    #[arg(
        short = 'f',
        long = "filename",
        value_name = "FILE|DIR|-",
        required = true
    )]
    pub files: Vec<PathBuf>,
}

/// Arguments of `ciliate delete`.
#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// A manifest file, a directory of them, or - for standard input; repeatable.
    #[arg(
        short = 'f',
        long = "filename",
        value_name = "FILE|DIR|-",
        required = true
    )]
    pub files: Vec<PathBuf>,

    /// Succeed when an object does not exist.
    #[arg(long)]
    pub ignore_not_found: bool,
}

/// `ciliate bpf ct ...`
#[derive(Debug, Subcommand)]
pub enum CtCommand {
    /// List connection-tracking entries
    #[command(
        visible_alias = "ls",
        long_about = "List connection-tracking entries: PROTO, SRC, DST, DIR, EXPIRES, \
            TX and RX (packets/bytes), FLAGS.\n\n\
            SRC and DST are those of the original direction; DIR says whether the endpoint \
            opened the connection (egress) or received it (ingress).",
        after_help = "Examples:\n  \
            ciliate bpf ct list\n  \
            ciliate bpf ct list -o json | jq '.[] | select(.proto == \"tcp\")'"
    )]
    List,
}

/// Which events `ciliate monitor` follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum EventType {
    /// Dropped packets, with the reason.
    Drop,
    /// Forwarded packets (new connections and TCP flag changes).
    Trace,
}

impl EventType {
    /// The value of the API's `type` query parameter.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Drop => "drop",
            Self::Trace => "trace",
        }
    }
}

/// Arguments of `ciliate monitor`.
#[derive(Debug, Args)]
pub struct MonitorArgs {
    /// Only events of this type (default: all).
    #[arg(short = 't', long = "type", value_enum, value_name = "TYPE")]
    pub kind: Option<EventType>,
}

/// Arguments of `ciliate version`.
#[derive(Debug, Args)]
pub struct VersionArgs {
    /// Only the client's version; do not contact the agent.
    #[arg(long)]
    pub client: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn output_flag_works_before_and_after_the_subcommand() {
        let before = Cli::try_parse_from(["ciliate", "-o", "json", "endpoint", "list"]);
        let after = Cli::try_parse_from(["ciliate", "endpoint", "list", "-o", "yaml"]);
        assert!(
            matches!(
                before,
                Ok(Cli {
                    output: Format::Json,
                    ..
                })
            ),
            "{before:?}"
        );
        assert!(
            matches!(
                after,
                Ok(Cli {
                    output: Format::Yaml,
                    ..
                })
            ),
            "{after:?}"
        );
    }

    #[test]
    fn usage_errors_are_exit_code_2() {
        for args in [
            vec!["ciliate", "identity", "get", "abc"],
            vec!["ciliate", "-o", "xml", "status"],
            vec!["ciliate", "nope"],
            vec!["ciliate", "monitor", "--type", "everything"],
            vec!["ciliate", "apply"],
            vec!["ciliate", "service", "get"],
        ] {
            match Cli::try_parse_from(&args) {
                Ok(cli) => panic!("{args:?} parsed: {cli:?}"),
                Err(e) => assert_eq!(e.exit_code(), 2, "{args:?}"),
            }
        }
    }
}
