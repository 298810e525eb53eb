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
        unchanged, for scripts; -o jsonpath=TEMPLATE picks fields as kubectl does (a listing \
        is {.items}).\n\n\
        Exit codes: 0 success, 1 failure (agent unreachable or unhealthy, object not found, \
        invalid manifests, any other error), 2 usage error. `policy trace` exits 0 allowed, 1 \
        denied, 2 when it cannot trace.",
    after_help = "Examples:\n  \
        ciliate status\n  \
        ciliate endpoint list\n  \
        ciliate endpoint get default/web\n  \
        ciliate monitor --type drop\n  \
        CILIATE_SOCKET=/tmp/agent.sock ciliate identity list -o json",
    after_long_help = "Examples:\n  \
        ciliate status                        # is the agent healthy? (exit code 0/1)\n  \
        ciliate status --wait                 # wait until it is (up to --wait-duration 5m)\n  \
        ciliate endpoint list -o jsonpath='{.items[*].ipv4}'\n  \
        ciliate endpoint list                 # the pods this node serves\n  \
        ciliate endpoint get default/web      # one endpoint, by id, container id or ns/pod\n  \
        ciliate identity list -o json         # identities, as the API returns them\n  \
        ciliate bpf ct list                   # the connection-tracking table\n  \
        ciliate apply -f examples/services/   # Services and EndpointSlices, kubectl-style\n  \
        ciliate service list                  # Services, their frontends and backends\n  \
        ciliate bpf lb list                   # the load-balancing maps, raw\n  \
        ciliate policy import -f examples/policies/cnp-client-ingress.yaml\n  \
        ciliate policy trace --src default/client --dst default/server --dport 8080/tcp\n  \
        ciliate bpf policy get default/server # an endpoint's policy map, raw\n  \
        ciliate monitor --type drop           # follow drops until Ctrl-C\n  \
        ciliate --socket /tmp/agent.sock status\n  \
        ciliate lab up --nodes 2              # a cluster of network namespaces on this machine\n  \
        ciliate connectivity test             # what passes and what is dropped, on that lab\n  \
        ciliate lab down\n  \
        ciliate install --dry-run | kubectl apply -f -   # onto a Kubernetes cluster"
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

    /// Output format: table, json, yaml, or jsonpath=TEMPLATE (kubectl's template, e.g.
    /// '{.items[*].id}'; listings are .items) [default: table; compact for observe].
    #[arg(
        short = 'o',
        long,
        global = true,
        value_parser = crate::output::parse_format,
        value_name = "FORMAT"
    )]
    pub output: Option<Format>,

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
            ciliate status --wait --wait-duration 2m   # wait for a healthy agent\n  \
            ciliate status --verbose                   # also every map, program and problem"
    )]
    Status(StatusArgs),

    /// Show the agent's effective configuration
    #[command(
        long_about = "Show the configuration the agent runs with: every flag, environment \
            variable and default resolved, as the agent serialises it (GET /v1/config), like \
            `cilium-dbg config`. The table prints one key per line, nested keys joined with \
            dots.",
        after_help = "Examples:\n  \
            ciliate config\n  \
            ciliate config -o json | jq .observer\n  \
            ciliate config -o jsonpath='{.podCidr}'"
    )]
    Config,

    /// List the agent's metrics (Prometheus), by name and labels
    #[command(
        subcommand,
        long_about = "The agent's Prometheus metrics, read from its metrics listener \
            (the address in `ciliate config`, observer.metricsAddress), like `cilium-dbg \
            metrics list`.",
        after_help = "Examples:\n  \
            ciliate metrics list\n  \
            ciliate metrics list --match-pattern drop\n  \
            ciliate metrics list -o json | jq '.[] | select(.value > 0)'"
    )]
    Metrics(MetricsCommand),

    /// List the nodes this agent knows
    #[command(
        subcommand,
        long_about = "List the nodes this agent knows: NAME, UNDERLAY IP (what other nodes \
            tunnel to), POD CIDR, HEALTH, and which one answers (*). Outside a cluster, the \
            node alone.",
        after_help = "Examples:\n  \
            ciliate node list\n  \
            ciliate node list -o jsonpath='{.items[*].name}'"
    )]
    Node(ListOnly),

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

    /// Show and clean the names learned from DNS answers (toFQDNs)
    #[command(
        subcommand,
        long_about = "The agent's FQDN cache: the names the DNS proxy's allowed answers \
            taught, with their addresses, as `toFQDNs` rules allow them, like `cilium fqdn \
            cache`.",
        after_help = "Examples:\n  \
            ciliate fqdn cache list\n  \
            ciliate fqdn cache list --matchpattern '*.example.com' -o json\n  \
            ciliate fqdn cache clean --matchpattern api.example.com"
    )]
    Fqdn(FqdnCommand),

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

    /// Apply Kubernetes Services, EndpointSlices, Endpoints and network policies from manifests
    #[command(
        long_about = "Apply Kubernetes Service, EndpointSlice and Endpoints objects, and \
            NetworkPolicy, CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy objects, \
            kubectl-style (`ciliate policy import` takes policies only).\n\n\
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

    /// Import, inspect, validate and trace network policies
    #[command(
        subcommand,
        long_about = "Network policies: Kubernetes NetworkPolicy, CiliumNetworkPolicy and \
            CiliumClusterwideNetworkPolicy, enforced per endpoint by the datapath.\n\n\
            Policies follow identities (label sets), not addresses. An endpoint selected by a \
            policy in a direction is default-deny there; deny rules win over allow rules. \
            Dropped packets show in `ciliate monitor` with reason 133 (no rule allows it) or \
            181 (a deny rule matched).",
        after_help = "Examples:\n  \
            ciliate policy import -f examples/policies/\n  \
            ciliate policy get\n  \
            ciliate policy get cnp/default/client-ingress -o yaml\n  \
            ciliate policy validate -f new-policy.yaml\n  \
            ciliate policy trace --src default/client --dst default/server --dport 8080\n  \
            ciliate policy delete cnp/default/client-ingress"
    )]
    Policy(PolicyCommand),

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

    /// Show flows (Hubble-compatible): the last ones, or follow them
    #[command(
        long_about = "Show flows: datapath events decoded and named (pods, namespaces, labels, \
            Services), and the HTTP, DNS and Kafka records of the node's L7 proxy (--type l7), \
            from the agent's Hubble-compatible observer API (--hubble-socket). The flags, the \
            filters they build and the output are `hubble observe`'s.\n\n\
            Without --last, --first, --since or --follow the last 20 flows are shown. Values \
            of one filter flag are alternatives; different flags must all match. --pod, --ip, \
            --label, --port, --service, --fqdn, --identity and --namespace match either end. \
            --not sends the one filter flag after it to the denylist. Some flags cannot be \
            combined (--ip with --from-ip, --pod with --namespace, ...), as in Hubble.\n\n\
            -o compact (default): one line per flow; dict: KEY: value blocks; table: aligned \
            columns (printed at the end, not with --follow); json and jsonpb: one \
            GetFlowsResponse per line in Hubble's JSON (proto field names such as \
            .flow.source.pod_name, times in UTC with Z); yaml: the same as a `---` stream. \
            Node status events of a relay go to stderr. Bad flags exit 2.",
        after_help = "Event types for --type TYPE[:SUBTYPE]:\n  \
            trace (to-endpoint, to-proxy, to-host, to-stack, to-overlay, to-network, \
            from-endpoint, from-proxy, from-host, from-stack, from-overlay, from-network, ...), \
            drop, policy-verdict, l7, capture, trace-sock, or numbers (drop:133).\n\n\
            Examples:\n  \
            ciliate observe --last 50\n  \
            ciliate observe -f --verdict DROPPED --print-node-name\n  \
            ciliate observe --from-pod default/client --to-port 80 --protocol tcp\n  \
            ciliate observe -n prod --not --verdict FORWARDED\n  \
            ciliate observe --type trace:to-endpoint --to-identity world\n  \
            ciliate observe --to-service default/web --traffic-direction ingress\n  \
            ciliate observe --type l7 --http-method GET --http-path '^/api/' --http-status 5+\n  \
            ciliate observe --since 5m -o json | jq .flow.source.pod_name\n  \
            ciliate observe --from-label app=web --print-raw-filters"
    )]
    Observe(Box<crate::commands::observe::ObserveArgs>),

    /// Serve the service map in a browser: workloads, Services and their connections, live
    #[command(
        long_about = "Serve the service map (what hubble-ui shows) from this process: \
            namespaces as areas, workloads (pods grouped by their app labels, with their \
            identities) and Services as boxes, connections with protocol, port, verdict, rate \
            and HTTP requests, dropped ones in red, and a flow table with the filters of \
            `ciliate observe`, updated live. Flows come from an Observer: --server (the relay, \
            host:port), --hubble-socket (a node), or else the lab's relay (its node0 when it has \
            none), or else the hubble.sock beside --socket. The page and its assets are built into the binary.",
        after_help = "Examples:\n  \
            ciliate ui                                   # the lab's map on http://127.0.0.1:12000/\n  \
            ciliate ui --server 127.0.0.1:4245 --open\n  \
            ciliate ui --hubble-socket /var/run/ciliate/hubble.sock --address 0.0.0.0:12000\n  \
            open http://127.0.0.1:12000/?namespace=demo&verdict=DROPPED"
    )]
    Ui(crate::commands::ui::UiArgs),

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

    /// Run a Ciliate cluster on this machine: nodes and pods as network namespaces
    #[command(
        subcommand,
        long_about = "Run a Ciliate cluster on this machine, made of network namespaces: \
            etcd, N nodes each running the real ciliate-agent, pods wired by the real \
            ciliate-cni, and a demo app. The host's own networking is never touched. See \
            docs/lab.md for the layout.",
        after_help = "Examples:\n  \
            ciliate lab up --nodes 2\n  \
            ciliate lab status\n  \
            eval $(ciliate lab env 1)\n  \
            ciliate lab down"
    )]
    Lab(crate::commands::lab::LabCommand),

    /// Test connectivity and policy enforcement on a lab
    #[command(
        subcommand,
        long_about = "Test connectivity and policy enforcement on a lab, scenario by \
            scenario, in the spirit of `cilium connectivity test`.",
        after_help = "Examples:\n  \
            ciliate connectivity test\n  \
            ciliate connectivity test --test 'ingress'"
    )]
    Connectivity(crate::commands::connectivity::ConnectivityCommand),

    /// Print the manifests that install Ciliate on a Kubernetes cluster (--dry-run)
    #[command(
        long_about = "Print the manifests that install Ciliate on a Kubernetes cluster, as one \
            YAML stream separated by ---, like `cilium install --dry-run`: the \
            CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy CRDs, then the Helm chart \
            deploy/helm/ciliate rendered (ServiceAccount, ConfigMap of agent settings, \
            read-only ClusterRole and its binding, the agent DaemonSet). The chart's files are \
            compiled in and rendered as `helm template --include-crds` renders them, with the \
            same values: --values files, then --set (Helm's syntax), then --version.\n\n\
            Nothing is sent to a cluster: pipe the output to `kubectl apply -f -`. Without \
            --dry-run the command says so and exits 2. Unknown value keys, values of the wrong \
            type and malformed --set items are usage errors (exit 2) naming the key.",
        after_help = "Examples:\n  \
            ciliate install --dry-run | kubectl apply -f -\n  \
            ciliate install --dry-run --set tunnel=disabled --set hubble.listenAddress=:4244\n  \
            ciliate install --dry-run -f my-values.yaml --namespace ciliate-system --version 0.2.0\n  \
            helm template ciliate deploy/helm/ciliate -n kube-system --include-crds   # the same"
    )]
    Install(crate::commands::install::InstallArgs),

    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    #[command(
        long_about = "Print the completion script for a shell, to be sourced by it.",
        after_help = "Examples:\n  \
            source <(ciliate completion bash)\n  \
            ciliate completion zsh > \"${fpath[1]}/_ciliate\"\n  \
            ciliate completion fish > ~/.config/fish/completions/ciliate.fish"
    )]
    Completion {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
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

/// `ciliate fqdn ...`
#[derive(Debug, Subcommand)]
pub enum FqdnCommand {
    /// The FQDN cache
    #[command(subcommand)]
    Cache(FqdnCacheCommand),
}

/// `ciliate fqdn cache ...`
#[derive(Debug, Subcommand)]
pub enum FqdnCacheCommand {
    /// List the names learned from DNS answers
    #[command(
        visible_alias = "ls",
        long_about = "List the names learned from the DNS proxy's allowed answers: NAME, \
            IPS, TTL (as the last answer gave it), TTL LEFT (seconds until the last address \
            expires, with --tofqdns-min-ttl applied) and ENDPOINTS (the endpoint ids that \
            asked). An address kept past its expiry for a connection still open is marked \
            (zombie).",
        after_help = "Examples:\n  \
            ciliate fqdn cache list\n  \
            ciliate fqdn cache list --matchpattern '*.s3.example.com'\n  \
            ciliate fqdn cache list -o jsonpath='{.items[*].name}'"
    )]
    List {
        /// Only names this matches: a name, or a pattern with `*` within one label.
        #[arg(long, value_name = "PATTERN")]
        matchpattern: Option<String>,
    },

    /// Forget names learned from DNS answers
    #[command(
        long_about = "Forget the names learned from DNS answers (all, or those --matchpattern \
            matches), as `cilium fqdn cache clean`: their addresses leave the policy maps at \
            once, so pods need a new DNS answer before they reach them again. Prints how many \
            names and entries went.",
        after_help = "Examples:\n  \
            ciliate fqdn cache clean\n  \
            ciliate fqdn cache clean --matchpattern '*.example.com'"
    )]
    Clean {
        /// Only names this matches: a name, or a pattern with `*` within one label.
        #[arg(long, value_name = "PATTERN")]
        matchpattern: Option<String>,
    },
}

/// `ciliate identity ...`
#[derive(Debug, Subcommand)]
pub enum IdentityCommand {
    /// List the identities known on this node
    #[command(
        visible_alias = "ls",
        long_about = "List the identities known on this node, reserved ones included, and \
            in a cluster those of other nodes' endpoints (from the kvstore, REFS 0): ID, \
            LABELS (with the namespace's labels), RESERVED, REFS (endpoints of this node using \
            it).",
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

    /// The policy map of an endpoint
    #[command(
        subcommand,
        long_about = "The policy map of an endpoint, read back from the datapath: one entry per \
            (peer identity, direction, protocol, port range), allow or deny, with the rule it \
            came from and the packets it admitted.",
        after_help = "Examples:\n  \
            ciliate bpf policy get default/server\n  \
            ciliate bpf policy get 3 -o json"
    )]
    Policy(BpfPolicyCommand),

    /// The ipcache: which identity each address or prefix has
    #[command(
        subcommand,
        long_about = "The ipcache map, read back from the datapath: PREFIX, IDENTITY (with its \
            labels) and, for pods of other nodes, TUNNEL ENDPOINT (the node's underlay \
            address), as `cilium-dbg bpf ipcache list` shows it.",
        after_help = "Examples:\n  \
            ciliate bpf ipcache list\n  \
            ciliate bpf ipcache list -o jsonpath='{.items[*].prefix}'"
    )]
    Ipcache(ListOnly),

    /// The endpoint map: how the datapath finds each pod interface
    #[command(
        subcommand,
        long_about = "The endpoint map, read back from the datapath: ENDPOINT ID, IPV4, \
            IDENTITY, IFINDEX (the host-side veth the programs are keyed by), IFNAME, MAC and \
            HOST MAC, as `cilium-dbg bpf endpoint list` shows it.",
        after_help = "Examples:\n  \
            ciliate bpf endpoint list"
    )]
    Endpoint(ListOnly),
}

/// A command that only lists.
#[derive(Debug, Subcommand)]
pub enum ListOnly {
    /// List the entries
    #[command(visible_alias = "ls")]
    List,
}

/// `ciliate bpf policy ...`
#[derive(Debug, Subcommand)]
pub enum BpfPolicyCommand {
    /// Show an endpoint's policy map
    #[command(
        long_about = "Show an endpoint's policy map as the datapath holds it: whether each \
            direction is enforced (default deny), then one row per entry: IDENTITY (the peer, \
            with its labels; `any` for every peer), DIRECTION, PROTO, PORT(S) (ICMP: the type), \
            VERDICT (allow or deny), MATCH (l3-only, l3-l4, l4-only, all), RULE (the policy and \
            the rule's field path) and PACKETS (admitted by this entry since the policy was last \
            written).\n\n\
            ENDPOINT is the endpoint id, the container id, or namespace/pod.",
        after_help = "Examples:\n  \
            ciliate bpf policy get default/server\n  \
            ciliate bpf policy get 3 -o yaml"
    )]
    Get {
        /// Endpoint id, container id, or namespace/pod.
        #[arg(value_name = "ENDPOINT")]
        endpoint: String,
    },
}

/// `ciliate policy ...`
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Apply policies from manifests
    #[command(
        long_about = "Apply NetworkPolicy, CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy \
            objects from manifests, kubectl-style.\n\n\
            -f takes a file, a directory (its *.yaml, *.yml and *.json files, in name order) or - \
            for standard input, and may be repeated. Documents of any other kind are refused \
            before anything is sent (use `ciliate apply` for Services). All documents form one \
            batch: if any is invalid nothing is applied and every problem is listed with its \
            file, document, field and reason (exit code 1). When the command returns, the \
            policies are in force on every endpoint; the last line is the node's policy \
            revision that holds them (`Revision: N`, for `ciliate policy wait`).\n\n\
            Fields parsed but not enforced yet (toServices, \
            authentication) \
            are reported as warnings on standard error; the rest of the policy is enforced, \
            never more permissively than written.",
        after_help = "Examples:\n  \
            ciliate policy import -f client-ingress.yaml\n  \
            ciliate policy import -f examples/policies/\n  \
            kubectl get cnp,netpol -A -o yaml | ciliate policy import -f -"
    )]
    Import(PolicyFilesArgs),

    /// Delete policies, by name or as named in manifests
    #[command(
        long_about = "Delete policies: named as KIND/NAMESPACE/NAME (KIND/NAME for a clusterwide \
            policy, or a namespaced one in `default`), or as the manifests given with -f name \
            them (kind, namespace and name; the rest of each document is not checked). KIND is \
            NetworkPolicy (netpol), CiliumNetworkPolicy (cnp) or CiliumClusterwideNetworkPolicy \
            (ccnp).\n\n\
            A policy that does not exist is an error (exit code 1) unless --ignore-not-found is \
            given.",
        after_help = "Examples:\n  \
            ciliate policy delete cnp/default/client-ingress\n  \
            ciliate policy delete ccnp/deny-world netpol/prod/default-deny\n  \
            ciliate policy delete -f client-ingress.yaml --ignore-not-found"
    )]
    Delete(PolicyDeleteArgs),

    /// List the policies in force, or show one
    #[command(
        visible_alias = "list",
        long_about = "Without POLICY: list the policies in force: KIND, NAMESPACE, NAME, \
            ENDPOINTS (endpoints of this node it selects), SOURCE (api, or the manifest \
            directory's file) and WARNINGS (fields not enforced as written), then the node's \
            policy revision (`Revision: N`, with the one in force when that is older; \
            `ciliate policy wait` waits for it).\n\n\
            With POLICY (KIND/NAMESPACE/NAME, or KIND/NAME for a clusterwide policy): that \
            policy's summary and manifest; -o json|yaml prints the manifest alone.",
        after_help = "Examples:\n  \
            ciliate policy get\n  \
            ciliate policy get cnp/default/client-ingress\n  \
            ciliate policy get ccnp/deny-world -o yaml"
    )]
    Get {
        /// KIND/NAMESPACE/NAME, or KIND/NAME for a clusterwide policy.
        #[arg(value_name = "POLICY")]
        policy: Option<String>,
    },

    /// Check policy manifests without applying them
    #[command(
        long_about = "Check policy manifests as the agent would, without applying anything.\n\n\
            Exit code 0 and `valid` when every document would apply (fields that would not be \
            enforced as written are listed as warnings on standard error); exit code 1 with \
            every problem, each with its file, document, field and reason, otherwise.",
        after_help = "Examples:\n  \
            ciliate policy validate -f client-ingress.yaml\n  \
            ciliate policy validate -f examples/policies/ -o json"
    )]
    Validate(PolicyFilesArgs),

    /// Would a flow be allowed, and which rule decides?
    #[command(
        long_about = "Would a flow from --src to --dst on --dport be allowed, and which rule \
            decides? The answer is the policy engine's, from the same policies and identities \
            the datapath is programmed with: the source's egress verdict, the destination's \
            ingress verdict, the deciding side, the deciding rule (policy and field path) and, \
            when denied, the drop reason the datapath reports (133 no rule allows it, 181 a deny \
            rule matched).\n\n\
            --src and --dst each take a pod (namespace/name, or a name in default), an endpoint \
            or container id, an IPv4 address (a pod's, the node's = host, else its CIDR identity \
            or world), or labels such as k8s:app=web,k8s:io.kubernetes.pod.namespace=default \
            (the identity with exactly these labels; a hypothetical one when no pod has them).\n\n\
            When a side sends the port through the node's L7 proxy (HTTP rules), the trace \
            lists the HTTP rules in force there; with --http-method and --http-path it says \
            which rule (policy, rule and rules.http index) allows that request, or that none \
            does and the proxy answers 403 Forbidden (then the verdict is DENIED).\n\n\
            --dst-fqdn NAME instead of --dst traces to every address the FQDN cache holds for \
            NAME (what DNS answers taught; `ciliate fqdn cache list`), one verdict per \
            address; with none learned yet it says so and the verdict is DENIED (toFQDNs \
            allows nothing before an answer).\n\n\
            Exit codes, for scripts: 0 allowed, 1 denied, 2 could not trace (usage error, \
            unknown pod, agent unreachable).",
        after_help = "Examples:\n  \
            ciliate policy trace --src default/client --dst default/server --dport 8080\n  \
            ciliate policy trace --src k8s:app=client,k8s:io.kubernetes.pod.namespace=default \\\n      \
            --dst 10.200.0.7 --dport 53/udp\n  \
            ciliate policy trace --src default/web --dst 203.0.113.9 --dport 8/icmp -o json\n  \
            ciliate policy trace --src default/client --dst default/server --dport 80 \\\n      \
            --http-method GET --http-path /api -H 'X-Token: t'\n  \
            ciliate policy trace --src default/client --dst-fqdn api.example.com --dport 443\n  \
            ciliate policy trace --src a --dst b --dport 80 >/dev/null && echo allowed"
    )]
    Trace(TraceArgs),

    /// What would proposed policies change? Replays recorded flows through them
    #[command(
        long_about = "Replay the flows the agent recorded (its flow history, see \
            --flow-history-size) through the policies in force and through a proposed set, and \
            list the flows whose verdict would change: allowed -> denied (the proposed policies \
            would break this traffic) and denied -> allowed (they would open it), grouped by \
            source, destination, port and protocol, with the number of flows, when they were \
            seen, and the rule that decides under each set. Nothing is applied: the agent \
            judges copies of its policy engine.\n\n\
            The proposed set is the policies in force with the manifests of -f added (a policy \
            of the same kind, namespace and name is replaced); with --replace-all it is the \
            manifests alone. Invalid manifests are refused with their file, document, field and \
            reason, and nothing is replayed.\n\n\
            Replayed are the L3/L4 flows where a side is an endpoint, forwarded or dropped by \
            policy, replies left out (policy judges a connection by its requests): each by its \
            identities and destination port, as the datapath judges it. Identities are taken \
            from the current identity table; one that no longer exists (its pods are gone) is \
            judged by the labels its flows recorded. --since limits the replay to recent flows \
            (default: all the history holds).\n\n\
            Exit codes: 0 nothing would change, 1 some flows would change verdict, 2 could not \
            replay (invalid manifests, agent unreachable).",
        after_help = "Examples:\n  \
            ciliate policy whatif -f deny-db.yaml\n  \
            ciliate policy whatif -f examples/policies/ --since 1h\n  \
            ciliate policy whatif -f all-policies/ --replace-all -o json | jq '.changes[]'\n  \
            ciliate policy whatif -f p.yaml >/dev/null || echo 'p.yaml would change traffic'"
    )]
    Whatif(WhatIfArgs),

    /// Wait until a policy revision is in force on every endpoint
    #[command(
        long_about = "Wait until the node's policy revision REVISION (what `ciliate policy \
            import` prints, or a later one) is in force: every endpoint's policy map and the \
            ipcache hold what the policies of that revision say, as `cilium-dbg policy wait` \
            does. Without REVISION, the node's current revision.\n\n\
            Exit code 0 once it is in force; 1 when --timeout passes first, with the revisions \
            the node has and holds.",
        after_help = "Examples:\n  \
            ciliate policy wait 12\n  \
            ciliate policy wait --timeout 5s\n  \
            rev=$(ciliate policy import -f p.yaml | sed -n 's/^Revision: //p'); ciliate policy wait $rev"
    )]
    Wait(PolicyWaitArgs),
}

/// Arguments of `ciliate policy whatif`.
#[derive(Debug, Args)]
pub struct WhatIfArgs {
    /// A manifest file, a directory of them, or - for standard input; repeatable.
    #[arg(
        short = 'f',
        long = "filename",
        value_name = "FILE|DIR|-",
        required = true
    )]
    pub files: Vec<PathBuf>,

    /// Replay only the flows of this last while, e.g. 1h, 30m, 2d; all recorded flows by
    /// default.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub since: Option<std::time::Duration>,

    /// The proposed manifests replace every policy in force (default: they are added, and
    /// replace only policies of the same kind, namespace and name).
    #[arg(long)]
    pub replace_all: bool,
}

/// Arguments of `ciliate policy wait`.
#[derive(Debug, Args)]
pub struct PolicyWaitArgs {
    /// The revision to wait for; the node's current one when left out.
    #[arg(value_name = "REVISION")]
    pub revision: Option<u64>,

    /// How long to wait: seconds, or a number with ms, s or m.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub timeout: std::time::Duration,
}

/// Files of `ciliate policy import|validate`.
#[derive(Debug, Args)]
pub struct PolicyFilesArgs {
    /// A manifest file, a directory of them, or - for standard input; repeatable.
    #[arg(
        short = 'f',
        long = "filename",
        value_name = "FILE|DIR|-",
        required = true
    )]
    pub files: Vec<PathBuf>,
}

/// Arguments of `ciliate policy delete`.
#[derive(Debug, Args)]
pub struct PolicyDeleteArgs {
    /// Policies to delete: KIND/NAMESPACE/NAME, or KIND/NAME.
    #[arg(value_name = "POLICY", required_unless_present = "files")]
    pub policies: Vec<String>,

    /// A manifest file, a directory of them, or - for standard input; repeatable.
    #[arg(short = 'f', long = "filename", value_name = "FILE|DIR|-")]
    pub files: Vec<PathBuf>,

    /// Succeed when a policy does not exist.
    #[arg(long)]
    pub ignore_not_found: bool,
}

/// Arguments of `ciliate policy trace`.
#[derive(Clone, Debug, Args)]
pub struct TraceArgs {
    /// The source: pod (ns/name), endpoint or container id, IPv4 address, or labels.
    #[arg(long, value_name = "POD|LABELS|IP")]
    pub src: String,

    /// The destination: pod (ns/name), endpoint or container id, IPv4 address, or labels.
    #[arg(
        long,
        value_name = "POD|LABELS|IP",
        required_unless_present = "dst_fqdn"
    )]
    pub dst: Option<String>,

    /// The destination as a DNS name: every address the FQDN cache holds for it.
    #[arg(long, value_name = "NAME", conflicts_with = "dst")]
    pub dst_fqdn: Option<String>,

    /// Destination port and protocol (tcp when omitted; udp, sctp, or icmp with the ICMP type
    /// as the port), e.g. 8080, 53/udp, 8/icmp.
    #[arg(long, value_name = "PORT[/PROTO]", value_parser = parse_dport)]
    pub dport: (u16, String),

    /// With --http-path: judge this HTTP request against the L7 rules of a redirected port.
    #[arg(long, value_name = "METHOD", requires = "http_path")]
    pub http_method: Option<String>,

    /// With --http-method: the request's path (a query after ? is ignored by the rules).
    #[arg(long, value_name = "PATH", requires = "http_method")]
    pub http_path: Option<String>,

    /// The request's Host (rules on host match nothing without it).
    #[arg(long, value_name = "HOST", requires = "http_method")]
    pub http_host: Option<String>,

    /// A request header, `Name: value`; repeatable.
    #[arg(
        short = 'H',
        long = "http-header",
        value_name = "NAME: VALUE",
        requires = "http_method"
    )]
    pub http_headers: Vec<String>,
}

/// `8080`, `53/udp`, `8/icmp`.
fn parse_dport(s: &str) -> Result<(u16, String), String> {
    let (port, proto) = s.split_once('/').unwrap_or((s, "tcp"));
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{port:?} is not a port (0-65535)"))?;
    let proto = proto.to_ascii_lowercase();
    if !matches!(proto.as_str(), "tcp" | "udp" | "sctp" | "icmp") {
        return Err(format!(
            "{proto:?} is not a protocol: use tcp, udp, sctp or icmp"
        ));
    }
    if proto == "icmp" && port > 255 {
        return Err(format!("ICMP type {port} is not 0-255"));
    }
    Ok((port, proto))
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
    /// Policy verdicts on new connections (allowed or denied), where a direction is under
    /// policy.
    PolicyVerdict,
}

impl EventType {
    /// The value of the API's `type` query parameter.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Drop => "drop",
            Self::Trace => "trace",
            Self::PolicyVerdict => "policy-verdict",
        }
    }
}

/// Arguments of `ciliate monitor`.
#[derive(Debug, Args)]
pub struct MonitorArgs {
    /// Only events of this type (default: all).
    #[arg(short = 't', long = "type", value_enum, value_name = "TYPE")]
    pub kind: Option<EventType>,
    /// Only events of these endpoints (their id, as `ciliate endpoint list` shows it);
    /// repeatable.
    #[arg(long, value_name = "ID")]
    pub related_to: Vec<u16>,
}

/// Arguments of `ciliate status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Wait until the agent answers and reports itself healthy (exit 1 if it does not within
    /// --wait-duration).
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits, e.g. 30s, 5m.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration, requires = "wait")]
    pub wait_duration: std::time::Duration,
    /// Everything: every map with its fill, every program, the API sockets.
    #[arg(short = 'v', long)]
    pub verbose: bool,
}

/// `ciliate metrics ...`
#[derive(Debug, Subcommand)]
pub enum MetricsCommand {
    /// List the metrics and their values
    #[command(
        visible_alias = "ls",
        long_about = "List the agent's metrics: METRIC, LABELS, VALUE, one row per series \
            (histogram buckets included)."
    )]
    List {
        /// Only metrics whose name contains this text.
        #[arg(short = 'p', long, value_name = "TEXT")]
        match_pattern: Option<String>,
    },
}

/// `5m`, `30s`, `1h30m`, `250ms`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(std::time::Duration::from_secs(secs));
    }
    humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e} (e.g. 30s, 5m)"))
}

/// Arguments of `ciliate version`.
#[derive(Debug, Args)]
pub struct VersionArgs {
    /// Only the client's version; do not contact the agent.
    #[arg(long)]
    pub client: bool,
}

/// Commands that print no API object, so take no `-o`: it is hidden from their help, and
/// refused (exit 2) when given.
const NO_OUTPUT: &[&[&str]] = &[
    &["lab", "up"],
    &["lab", "restart-agent"],
    &["completion"],
    &["install"],
];

/// The command line as clap sees it: the derive's, with `-o` hidden where it means nothing.
pub fn command() -> clap::Command {
    use clap::CommandFactory;
    let mut cmd = Cli::command();
    for path in NO_OUTPUT {
        if let Some(sub) = find(&mut cmd, path) {
            // A hidden local `-o` of the same id: clap then does not copy the global one in
            // (and its help does not list it); `parse_from` refuses it when given.
            let hidden = clap::Arg::new("output")
                .short('o')
                .long("output")
                .value_parser(crate::output::parse_format)
                .hide(true);
            *sub = std::mem::take(sub).arg(hidden);
        }
    }
    for path in NO_SOCKET {
        if let Some(sub) = find(&mut cmd, path) {
            // Not global here: the lab's commands find their agents themselves, so their
            // subcommands neither list nor take --socket.
            let hidden = clap::Arg::new("socket").long("socket").hide(true);
            *sub = std::mem::take(sub).arg(hidden);
        }
    }
    cmd
}

/// Commands that talk to no agent of this node's socket: `--socket` is not theirs.
const NO_SOCKET: &[&[&str]] = &[&["lab"], &["connectivity"], &["completion"], &["install"]];

fn find<'a>(cmd: &'a mut clap::Command, path: &[&str]) -> Option<&'a mut clap::Command> {
    match path.split_first() {
        None => Some(cmd),
        Some((first, rest)) => find(cmd.find_subcommand_mut(first)?, rest),
    }
}

/// Parses the process's arguments; usage errors exit 2, `--help`/`--version` 0, inside clap.
pub fn parse() -> Cli {
    parse_from(std::env::args_os()).unwrap_or_else(|e| e.exit())
}

/// Parses `args` as [`parse`] does, returning clap's error.
pub fn parse_from<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    use clap::FromArgMatches;
    let mut cmd = command();
    let matches = cmd.try_get_matches_from_mut(args)?;
    let cli = Cli::from_arg_matches(&matches).map_err(|e| e.format(&mut cmd))?;
    let mut path = Vec::new();
    let mut m = &matches;
    while let Some((name, sub)) = m.subcommand() {
        path.push(name);
        m = sub;
    }
    let given = m.try_get_one::<Format>("output").is_ok_and(|o| o.is_some());
    if given && NO_OUTPUT.contains(&path.as_slice()) {
        return Err(cmd.error(
            clap::error::ErrorKind::ArgumentConflict,
            format!("`ciliate {}` takes no -o/--output", path.join(" ")),
        ));
    }
    Ok(cli)
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
                    output: Some(Format::Json),
                    ..
                })
            ),
            "{before:?}"
        );
        assert!(
            matches!(
                after,
                Ok(Cli {
                    output: Some(Format::Yaml),
                    ..
                })
            ),
            "{after:?}"
        );
    }

    #[test]
    fn dport_takes_a_protocol() {
        assert_eq!(parse_dport("8080"), Ok((8080, "tcp".to_owned())));
        assert_eq!(parse_dport("53/UDP"), Ok((53, "udp".to_owned())));
        assert_eq!(parse_dport("8/icmp"), Ok((8, "icmp".to_owned())));
        assert!(parse_dport("70000").is_err());
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
            vec![
                "ciliate", "policy", "trace", "--src", "a", "--dst", "b", "--dport", "x",
            ],
            vec![
                "ciliate", "policy", "trace", "--src", "a", "--dst", "b", "--dport", "80/gre",
            ],
            vec![
                "ciliate", "policy", "trace", "--src", "a", "--dst", "b", "--dport", "300/icmp",
            ],
            vec!["ciliate", "policy", "trace", "--src", "a", "--dst", "b"],
            vec![
                "ciliate",
                "policy",
                "trace",
                "--src",
                "a",
                "--dst",
                "b",
                "--dport",
                "80",
                "--http-path",
                "/api",
            ],
            vec![
                "ciliate", "policy", "trace", "--src", "a", "--dst", "b", "--dport", "80", "-H",
                "X-A: 1",
            ],
            vec!["ciliate", "policy", "import"],
            vec!["ciliate", "policy", "delete"],
            vec!["ciliate", "bpf", "policy", "get"],
            vec!["ciliate", "-o", "jsonpath={.items[", "endpoint", "list"],
            vec!["ciliate", "-o", "jsonpath", "endpoint", "list"],
            vec!["ciliate", "lab", "up", "-o", "json"],
            vec!["ciliate", "completion", "tcsh"],
            vec!["ciliate", "status", "--wait-duration", "5m"],
            vec!["ciliate", "status", "--wait", "--wait-duration", "soon"],
            vec!["ciliate", "monitor", "--related-to", "x"],
        ] {
            match parse_from(&args) {
                Ok(cli) => panic!("{args:?} parsed: {cli:?}"),
                Err(e) => assert_eq!(e.exit_code(), 2, "{args:?}"),
            }
        }
    }

    #[test]
    fn output_is_hidden_where_it_means_nothing() {
        let mut cmd = command();
        cmd.build();
        let help = |cmd: &mut clap::Command, path: &[&str]| {
            let mut c = find(cmd, path).expect("subcommand").clone();
            c.render_long_help().to_string()
        };
        assert!(!help(&mut cmd, &["lab", "up"]).contains("--output"));
        assert!(!help(&mut cmd, &["completion"]).contains("--output"));
        assert!(!help(&mut cmd, &["lab", "up"]).contains("--socket"));
        assert!(!help(&mut cmd, &["connectivity", "test"]).contains("--socket"));
        assert!(help(&mut cmd, &["endpoint", "list"]).contains("--socket"));
        assert!(help(&mut cmd, &["lab", "status"]).contains("--output"));
        assert!(help(&mut cmd, &["endpoint", "list"]).contains("jsonpath=TEMPLATE"));
    }

    #[test]
    fn new_commands_parse() {
        let cli = parse_from([
            "ciliate",
            "status",
            "--wait",
            "--wait-duration",
            "30s",
            "-v",
        ])
        .expect("parses");
        let Command::Status(a) = cli.command else {
            panic!("not status")
        };
        assert!(a.wait && a.verbose);
        assert_eq!(a.wait_duration, std::time::Duration::from_secs(30));
        let cli = parse_from(["ciliate", "-o", "jsonpath={.items[*].id}", "endpoint", "ls"])
            .expect("parses");
        assert_eq!(cli.output, Some(Format::Jsonpath("{.items[*].id}")));
        let cli = parse_from([
            "ciliate",
            "monitor",
            "--related-to",
            "7",
            "--related-to",
            "9",
        ])
        .expect("parses");
        assert!(matches!(cli.command, Command::Monitor(ref m) if m.related_to == [7, 9]));
        assert!(parse_from(["ciliate", "completion", "bash"]).is_ok());
        assert!(parse_from(["ciliate", "metrics", "list", "-p", "drop"]).is_ok());
        assert!(parse_from(["ciliate", "config", "-o", "yaml"]).is_ok());
        let cli = parse_from([
            "ciliate",
            "policy",
            "trace",
            "--src",
            "a",
            "--dst",
            "b",
            "--dport",
            "80",
            "--http-method",
            "GET",
            "--http-path",
            "/api",
            "-H",
            "X-A: 1",
            "-H",
            "X-B: 2",
            "--http-host",
            "svc",
        ])
        .expect("parses");
        let Command::Policy(PolicyCommand::Trace(t)) = cli.command else {
            panic!("not a trace")
        };
        assert_eq!(
            (
                t.http_method.as_deref(),
                t.http_path.as_deref(),
                t.http_host.as_deref()
            ),
            (Some("GET"), Some("/api"), Some("svc"))
        );
        assert_eq!(t.http_headers, ["X-A: 1", "X-B: 2"]);
    }
}
