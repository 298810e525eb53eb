//! The Kubernetes objects the lab writes into its manifest directory: a ClusterIP Service and
//! the EndpointSlice the EndpointSlice controller would make for it.

use std::fmt::Write;
use std::net::Ipv4Addr;

/// One backend of a Service: its address and the node it runs on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    /// The pod's address.
    pub ip: Ipv4Addr,
    /// The node's name.
    pub node: String,
}

/// A ClusterIP Service `namespace/name` on `cluster_ip:port` (TCP) in front of `backends` on
/// `target_port`, with its EndpointSlice; the port is named `http`.
pub fn service(
    namespace: &str,
    name: &str,
    cluster_ip: Ipv4Addr,
    port: u16,
    target_port: u16,
    backends: &[Backend],
) -> String {
    let mut out = format!(
        "apiVersion: v1\n\
         kind: Service\n\
         metadata: {{name: {name}, namespace: {namespace}}}\n\
         spec:\n  \
           type: ClusterIP\n  \
           clusterIP: {cluster_ip}\n  \
           ports: [{{name: http, protocol: TCP, port: {port}, targetPort: {target_port}}}]\n\
         ---\n\
         apiVersion: discovery.k8s.io/v1\n\
         kind: EndpointSlice\n\
         metadata:\n  \
           name: {name}-lab\n  \
           namespace: {namespace}\n  \
           labels: {{kubernetes.io/service-name: {name}}}\n\
         addressType: IPv4\n\
         ports: [{{name: http, protocol: TCP, port: {target_port}}}]\n\
         endpoints:\n"
    );
    if backends.is_empty() {
        out.truncate(out.len() - 1);
        out.push_str(" []\n");
    }
    for b in backends {
        let _ = writeln!(
            out,
            "- addresses: [\"{}\"]\n  conditions: {{ready: true, serving: true, terminating: false}}\n  nodeName: {}",
            b.ip, b.node
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ciliate_model::manifest::{decode_all, split_documents};

    #[test]
    fn services_decode_as_the_agent_decodes_them() {
        let text = service(
            "demo",
            "backend",
            Ipv4Addr::new(10, 96, 0, 10),
            80,
            8080,
            &[
                Backend {
                    ip: Ipv4Addr::new(10, 200, 0, 3),
                    node: "lab-node0".into(),
                },
                Backend {
                    ip: Ipv4Addr::new(10, 200, 1, 3),
                    node: "lab-node1".into(),
                },
            ],
        );
        let docs = split_documents("svc.yaml", &text).expect("splits");
        let objects = decode_all(&docs).unwrap_or_else(|e| panic!("{e:?}\n{text}"));
        assert_eq!(objects.len(), 2, "{text}");
        let empty = service("t", "x", Ipv4Addr::new(10, 96, 0, 1), 80, 80, &[]);
        let docs = split_documents("e.yaml", &empty).expect("splits");
        decode_all(&docs).unwrap_or_else(|e| panic!("{e:?}\n{empty}"));
    }
}
