//! The invocation's environment: `CNI_COMMAND`, `CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME` and
//! `CNI_ARGS`. Pure: it reads a map, never the process environment, so tests need no `set_var`.

use std::collections::BTreeMap;
use std::ffi::OsString;

use ciliate_model::labels::SOURCE_K8S;
use ciliate_model::{Labels, NamedPort, PodRef};

use crate::error::CniError;

/// `CNI_COMMAND`.
pub const CNI_COMMAND: &str = "CNI_COMMAND";
/// `CNI_CONTAINERID`.
pub const CNI_CONTAINERID: &str = "CNI_CONTAINERID";
/// `CNI_NETNS`.
pub const CNI_NETNS: &str = "CNI_NETNS";
/// `CNI_IFNAME`.
pub const CNI_IFNAME: &str = "CNI_IFNAME";
/// `CNI_ARGS`.
pub const CNI_ARGS: &str = "CNI_ARGS";
/// `CNI_PATH` (unused: we delegate to no other plugin).
pub const CNI_PATH: &str = "CNI_PATH";
/// Our own: a file to append a debug log to.
pub const CILIATE_CNI_LOG: &str = "CILIATE_CNI_LOG";

/// The variables we read; the rest of the environment is ignored.
const KNOWN: [&str; 7] = [
    CNI_COMMAND,
    CNI_CONTAINERID,
    CNI_NETNS,
    CNI_IFNAME,
    CNI_ARGS,
    CNI_PATH,
    CILIATE_CNI_LOG,
];

/// The environment we care about, by name.
pub type Env = BTreeMap<String, String>;

/// Keeps the variables we read from `vars` (e.g. `std::env::vars_os()`). A value that is not
/// UTF-8 is refused rather than mangled: a lossy container id would address the wrong pod.
pub fn collect_env(vars: impl IntoIterator<Item = (OsString, OsString)>) -> Result<Env, CniError> {
    let mut env = Env::new();
    for (k, v) in vars {
        let Some(k) = k.to_str().filter(|k| KNOWN.contains(k)) else {
            continue;
        };
        let v = v
            .into_string()
            .map_err(|v| CniError::invalid_env(k, format!("{v:?} is not UTF-8")))?;
        env.insert(k.to_owned(), v);
    }
    Ok(env)
}

/// What the runtime asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Attach a container.
    Add,
    /// Detach it (idempotent).
    Del,
    /// Verify the attachment.
    Check,
    /// Report the spec versions we speak.
    Version,
    /// Report whether we can serve ADD (CNI 1.1).
    Status,
    /// Remove attachments not listed as valid (CNI 1.1).
    Gc,
}

impl Command {
    /// Reads `CNI_COMMAND`.
    pub fn from_env(env: &Env) -> Result<Self, CniError> {
        match non_empty(env, CNI_COMMAND) {
            None => Err(CniError::missing_env(CNI_COMMAND)),
            Some("ADD") => Ok(Self::Add),
            Some("DEL") => Ok(Self::Del),
            Some("CHECK") => Ok(Self::Check),
            Some("VERSION") => Ok(Self::Version),
            Some("STATUS") => Ok(Self::Status),
            Some("GC") => Ok(Self::Gc),
            Some(other) => Err(CniError::invalid_env(
                CNI_COMMAND,
                format!("unknown command {other:?} (want ADD, DEL, CHECK, VERSION, STATUS or GC)"),
            )),
        }
    }

    /// The command as the runtime spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Add => "ADD",
            Self::Del => "DEL",
            Self::Check => "CHECK",
            Self::Version => "VERSION",
            Self::Status => "STATUS",
            Self::Gc => "GC",
        }
    }
}

/// The parameters of ADD, DEL and CHECK.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invocation {
    /// `CNI_CONTAINERID`, validated.
    pub container_id: String,
    /// `CNI_IFNAME`, validated.
    pub ifname: String,
    /// `CNI_NETNS`; always present for ADD and CHECK, optional for DEL.
    pub netns: Option<String>,
    /// `CNI_ARGS`, parsed.
    pub args: CniArgs,
}

impl Invocation {
    /// Reads and validates the variables `command` needs.
    pub fn from_env(command: Command, env: &Env) -> Result<Self, CniError> {
        let container_id = non_empty(env, CNI_CONTAINERID)
            .ok_or_else(|| CniError::missing_env(CNI_CONTAINERID))?;
        validate_container_id(container_id)?;
        let ifname = non_empty(env, CNI_IFNAME).ok_or_else(|| CniError::missing_env(CNI_IFNAME))?;
        validate_ifname(ifname)?;
        // DEL must work when the namespace is already gone and the runtime no longer knows it.
        let netns = non_empty(env, CNI_NETNS).map(str::to_owned);
        if netns.is_none() && command != Command::Del {
            return Err(CniError::missing_env(CNI_NETNS));
        }
        let args = CniArgs::parse(env.get(CNI_ARGS).map_or("", String::as_str))?;
        Ok(Self {
            container_id: container_id.to_owned(),
            ifname: ifname.to_owned(),
            netns,
            args,
        })
    }
}

fn non_empty<'a>(env: &'a Env, var: &str) -> Option<&'a str> {
    env.get(var).map(String::as_str).filter(|v| !v.is_empty())
}

/// A container id as the spec allows it: a letter or digit, then letters, digits, `_`, `.`, `-`.
pub fn validate_container_id(id: &str) -> Result<(), CniError> {
    let mut chars = id.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
        Ok(())
    } else {
        Err(CniError::invalid_env(
            CNI_CONTAINERID,
            format!(
                "{id:?} is not a container id: it must start with a letter or digit and hold only \
                 letters, digits, '_', '.' and '-'"
            ),
        ))
    }
}

/// An interface name Linux accepts: 1 to 15 bytes, not `.` or `..`, no `/`, `:` or whitespace.
pub fn validate_ifname(name: &str) -> Result<(), CniError> {
    let why = if name.is_empty() {
        Some("it is empty".to_owned())
    } else if name.len() > 15 {
        Some(format!(
            "it is {} bytes long, Linux allows at most 15",
            name.len()
        ))
    } else if name == "." || name == ".." {
        Some("'.' and '..' are not interface names".to_owned())
    } else {
        name.chars()
            .find(|c| *c == '/' || *c == ':' || c.is_whitespace())
            .map(|c| format!("it holds {c:?}, which interface names may not"))
    };
    match why {
        None => Ok(()),
        Some(why) => Err(CniError::invalid_env(
            CNI_IFNAME,
            format!("{name:?}: {why}"),
        )),
    }
}

/// `CNI_ARGS`: `KEY=VALUE` pairs separated by `;`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CniArgs {
    /// From `K8S_POD_NAMESPACE` and `K8S_POD_NAME`; the namespace is `default` when only a
    /// name is given.
    pub pod: Option<PodRef>,
    /// From our own `CILIATE_LABELS=app=web,tier=front` (for runtimes without Kubernetes);
    /// labels without a source get `k8s`, so that policies select them as they would pods.
    pub labels: Labels,
    /// From our own `CILIATE_PORTS=http=8080/tcp,dns=53/udp`: the pod's named container ports,
    /// which policies naming ports resolve against.
    pub named_ports: Vec<NamedPort>,
}

/// Keys we know. Kubernetes runtimes pass all of these; we use the pod's name and namespace.
const KNOWN_ARGS: [&str; 7] = [
    "IgnoreUnknown",
    "K8S_POD_NAMESPACE",
    "K8S_POD_NAME",
    "K8S_POD_INFRA_CONTAINER_ID",
    "K8S_POD_UID",
    "CILIATE_LABELS",
    "CILIATE_PORTS",
];

impl CniArgs {
    /// Parses `CNI_ARGS`. Unknown keys are an error unless `IgnoreUnknown` is `1` or `true`
    /// (as libcni does), so that a typo does not silently drop a label.
    pub fn parse(s: &str) -> Result<Self, CniError> {
        let mut pairs = Vec::new();
        for part in s.split(';').filter(|p| !p.is_empty()) {
            // The first '=' splits, so values may hold '=' (CILIATE_LABELS=app=web).
            match part.split_once('=') {
                Some((k, v)) if !k.is_empty() => pairs.push((k, v)),
                _ => {
                    return Err(CniError::invalid_env(
                        CNI_ARGS,
                        format!("{part:?} is not a KEY=VALUE pair"),
                    ))
                }
            }
        }
        let mut ignore_unknown = false;
        for (k, v) in &pairs {
            if *k == "IgnoreUnknown" {
                ignore_unknown = match v.to_ascii_lowercase().as_str() {
                    "1" | "true" => true,
                    "0" | "false" | "" => false,
                    _ => {
                        return Err(CniError::invalid_env(
                            CNI_ARGS,
                            format!("IgnoreUnknown={v:?}: want 1, true, 0 or false"),
                        ))
                    }
                };
            }
        }
        let mut namespace = None;
        let mut name = None;
        let mut labels = Labels::new();
        let mut named_ports: Vec<NamedPort> = Vec::new();
        for (k, v) in pairs {
            match k {
                "K8S_POD_NAMESPACE" => namespace = Some(v).filter(|v| !v.is_empty()),
                "K8S_POD_NAME" => name = Some(v).filter(|v| !v.is_empty()),
                "CILIATE_LABELS" => {
                    let parsed = Labels::parse_list(v, SOURCE_K8S).map_err(|e| {
                        CniError::invalid_env(CNI_ARGS, format!("CILIATE_LABELS: {e}"))
                    })?;
                    for l in parsed.iter() {
                        labels.insert(l);
                    }
                }
                "CILIATE_PORTS" => {
                    for item in v.split(',').map(str::trim).filter(|i| !i.is_empty()) {
                        let port: NamedPort = item.parse().map_err(|e| {
                            CniError::invalid_env(CNI_ARGS, format!("CILIATE_PORTS: {e}"))
                        })?;
                        if named_ports.iter().any(|p| p.name == port.name) {
                            return Err(CniError::invalid_env(
                                CNI_ARGS,
                                format!("CILIATE_PORTS: port name {:?} given twice", port.name),
                            ));
                        }
                        named_ports.push(port);
                    }
                }
                k if KNOWN_ARGS.contains(&k) || ignore_unknown => {}
                k => {
                    return Err(CniError::invalid_env(
                        CNI_ARGS,
                        format!(
                            "unknown key {k:?} (known: {}; add IgnoreUnknown=1 to ignore others)",
                            KNOWN_ARGS.join(", ")
                        ),
                    ))
                }
            }
        }
        let pod = name.map(|name| PodRef {
            namespace: namespace.unwrap_or("default").to_owned(),
            name: name.to_owned(),
        });
        Ok(Self {
            pod,
            labels,
            named_ports,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::error::code;

    fn env(pairs: &[(&str, &str)]) -> Env {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn add_env() -> Env {
        env(&[
            (CNI_COMMAND, "ADD"),
            (CNI_CONTAINERID, "abc123"),
            (CNI_NETNS, "/var/run/netns/x"),
            (CNI_IFNAME, "eth0"),
        ])
    }

    #[test]
    fn collect_env_keeps_ours_and_refuses_non_utf8() {
        use std::os::unix::ffi::OsStringExt;
        let vars = vec![
            (OsString::from("CNI_COMMAND"), OsString::from("ADD")),
            (OsString::from("HOME"), OsString::from_vec(vec![0xff])),
        ];
        let e = collect_env(vars).unwrap();
        assert_eq!(e.len(), 1);
        assert_eq!(e[CNI_COMMAND], "ADD");
        let bad = vec![(
            OsString::from("CNI_CONTAINERID"),
            OsString::from_vec(vec![0xff]),
        )];
        let err = collect_env(bad).unwrap_err();
        assert_eq!(err.code, code::INVALID_ENV);
        assert!(err.msg.contains("CNI_CONTAINERID"), "{err}");
    }

    #[test]
    fn commands() {
        for (s, c) in [
            ("ADD", Command::Add),
            ("DEL", Command::Del),
            ("CHECK", Command::Check),
            ("VERSION", Command::Version),
            ("STATUS", Command::Status),
            ("GC", Command::Gc),
        ] {
            assert_eq!(Command::from_env(&env(&[(CNI_COMMAND, s)])).unwrap(), c);
            assert_eq!(c.as_str(), s);
        }
        let missing = Command::from_env(&env(&[])).unwrap_err();
        assert_eq!(missing.code, code::INVALID_ENV);
        assert_eq!(missing.msg, "CNI_COMMAND is not set");
        let unknown = Command::from_env(&env(&[(CNI_COMMAND, "add")])).unwrap_err();
        assert_eq!(unknown.code, code::INVALID_ENV);
        assert!(unknown.msg.contains("\"add\""), "{unknown}");
    }

    #[test]
    fn add_needs_container_ifname_and_netns() {
        let ok = Invocation::from_env(Command::Add, &add_env()).unwrap();
        assert_eq!(ok.container_id, "abc123");
        assert_eq!(ok.ifname, "eth0");
        assert_eq!(ok.netns.as_deref(), Some("/var/run/netns/x"));
        for var in [CNI_CONTAINERID, CNI_IFNAME, CNI_NETNS] {
            for how in ["remove", "empty"] {
                let mut e = add_env();
                if how == "remove" {
                    e.remove(var);
                } else {
                    e.insert(var.to_owned(), String::new());
                }
                let err = Invocation::from_env(Command::Add, &e).unwrap_err();
                assert_eq!(err.code, code::INVALID_ENV, "{var} {how}");
                assert_eq!(err.msg, format!("{var} is not set"));
            }
        }
    }

    #[test]
    fn del_works_without_netns() {
        let mut e = add_env();
        e.remove(CNI_NETNS);
        assert_eq!(Invocation::from_env(Command::Del, &e).unwrap().netns, None);
        let err = Invocation::from_env(Command::Check, &e).unwrap_err();
        assert_eq!(err.msg, "CNI_NETNS is not set");
    }

    #[test]
    fn container_ids() {
        for good in ["a", "0", "abc-DEF_1.2", "3f6940ab5ab43bc522569d15b23f8c1b"] {
            validate_container_id(good).unwrap();
        }
        for bad in ["", "-a", "_a", ".a", "a b", "a/b", "a:b", "ä"] {
            let err = validate_container_id(bad).unwrap_err();
            assert_eq!(err.code, code::INVALID_ENV, "{bad:?}");
            assert!(err.msg.starts_with("CNI_CONTAINERID is invalid"), "{err}");
        }
    }

    #[test]
    fn ifnames() {
        for good in ["eth0", "a", "net1", "fifteen-bytes-x", "a.b", "..."] {
            validate_ifname(good).unwrap();
        }
        let cases = [
            ("", "it is empty"),
            ("sixteen-bytes-xx", "16 bytes long"),
            (".", "'.' and '..'"),
            ("..", "'.' and '..'"),
            ("a/b", "'/'"),
            ("a:b", "':'"),
            ("a b", "' '"),
            ("a\tb", "'\\t'"),
        ];
        for (bad, why) in cases {
            let err = validate_ifname(bad).unwrap_err();
            assert_eq!(err.code, code::INVALID_ENV, "{bad:?}");
            assert!(err.msg.starts_with("CNI_IFNAME is invalid"), "{err}");
            assert!(err.msg.contains(why), "{bad:?}: {err}");
        }
        // Bytes, not characters: 8 two-byte characters are 16 bytes.
        assert!(validate_ifname("éééééééé").is_err());
    }

    #[test]
    fn cni_args_kubernetes_style() {
        let a = CniArgs::parse(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u;FOO=bar",
        )
        .unwrap();
        assert_eq!(
            a.pod,
            Some(PodRef {
                namespace: "shop".into(),
                name: "web-0".into()
            })
        );
        assert!(a.labels.is_empty());
    }

    #[test]
    fn cni_args_pod_namespace_defaults() {
        let a = CniArgs::parse("K8S_POD_NAME=web-0").unwrap();
        assert_eq!(a.pod.unwrap().namespace, "default");
        assert_eq!(CniArgs::parse("K8S_POD_NAMESPACE=shop").unwrap().pod, None);
        assert_eq!(CniArgs::parse("").unwrap(), CniArgs::default());
        assert_eq!(CniArgs::parse(";;").unwrap(), CniArgs::default());
    }

    #[test]
    fn cni_args_labels() {
        let p = CniArgs::parse("CILIATE_PORTS=http=8080/tcp, dns=53/udp").unwrap();
        assert_eq!(
            p.named_ports
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["http=8080/tcp", "dns=53/udp"]
        );
        for bad in [
            "CILIATE_PORTS=http",
            "CILIATE_PORTS=http=8080,http=8081",
            "CILIATE_PORTS=Web=1",
        ] {
            let err = CniArgs::parse(bad).unwrap_err();
            assert!(err.msg.contains("CILIATE_PORTS"), "{bad}: {}", err.msg);
        }
        let a = CniArgs::parse("CILIATE_LABELS=app=web,tier=front").unwrap();
        assert_eq!(a.labels.to_string(), "k8s:app=web,k8s:tier=front");
        let a = CniArgs::parse("CILIATE_LABELS=container:role=db").unwrap();
        assert_eq!(a.labels.get("container", "role"), Some("db"));
        let err = CniArgs::parse("CILIATE_LABELS=app=we b").unwrap_err();
        assert_eq!(err.code, code::INVALID_ENV);
        assert!(
            err.msg.contains("CNI_ARGS") && err.msg.contains("CILIATE_LABELS"),
            "{err}"
        );
    }

    #[test]
    fn cni_args_errors() {
        for (bad, want) in [
            ("FOO", "\"FOO\" is not a KEY=VALUE pair"),
            ("=x", "\"=x\" is not a KEY=VALUE pair"),
            ("FOO=bar", "unknown key \"FOO\""),
            ("IgnoreUnknown=maybe", "IgnoreUnknown=\"maybe\""),
            ("IgnoreUnknown=0;FOO=bar", "unknown key \"FOO\""),
        ] {
            let err = CniArgs::parse(bad).unwrap_err();
            assert_eq!(err.code, code::INVALID_ENV, "{bad}");
            assert!(err.msg.starts_with("CNI_ARGS is invalid"), "{err}");
            assert!(err.msg.contains(want), "{bad}: {err}");
        }
        // IgnoreUnknown applies wherever it stands.
        CniArgs::parse("FOO=bar;IgnoreUnknown=true").unwrap();
    }

    proptest! {
        #[test]
        fn any_valid_pairs_parse(name in "[a-z][a-z0-9-]{0,20}", ns in "[a-z][a-z0-9-]{0,20}", junk in "[A-Z_]{1,10}") {
            let s = format!("IgnoreUnknown=1;{junk}=x;K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name}");
            let a = CniArgs::parse(&s).unwrap();
            prop_assert_eq!(a.pod, Some(PodRef { namespace: ns, name }));
        }

        #[test]
        fn container_id_validation_matches_the_spec(id in "\\PC{0,12}") {
            let mut chars = id.chars();
            let expect = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
                && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
            prop_assert_eq!(validate_container_id(&id).is_ok(), expect);
        }

        #[test]
        fn parsing_never_panics(s in "\\PC{0,64}") {
            let _ = CniArgs::parse(&s);
            let _ = validate_ifname(&s);
        }
    }
}
