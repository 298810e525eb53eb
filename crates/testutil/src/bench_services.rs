//! The objects `bench/services-scale.sh` applies, as the JSON text of the documents `ciliate
//! apply` sends: Service `bench/svc-<i>` (cluster IP 10.96.0.0 plus i + 1, one port `http`
//! 80 → 5001/TCP) and its EndpointSlice `bench/svc-<i>-a` (two ready endpoints, 10.128.0.0
//! plus 2i and 2i + 1, port `http` 5001/TCP). Memory tests decode them from text, as the
//! agent decodes a request (a decoded list's room depends on it).

use std::net::Ipv4Addr;

fn ip(base: u32, i: u32) -> Ipv4Addr {
    Ipv4Addr::from(base + i)
}

/// The name of the `i`th Service.
pub fn service_name(i: u32) -> String {
    format!("svc-{i}")
}

/// The `i`th Service, as JSON text.
pub fn service(i: u32) -> String {
    format!(
        r#"{{"apiVersion":"v1","kind":"Service","metadata":{{"name":"{}","namespace":"bench"}},"spec":{{"clusterIP":"{}","ports":[{{"name":"http","port":80,"targetPort":5001,"protocol":"TCP"}}]}}}}"#,
        service_name(i),
        ip(0x0A60_0000, i + 1)
    )
}

/// The `i`th Service's EndpointSlice, as JSON text.
pub fn slice(i: u32) -> String {
    format!(
        r#"{{"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice","metadata":{{"name":"{name}-a","namespace":"bench","labels":{{"kubernetes.io/service-name":"{name}"}}}},"addressType":"IPv4","ports":[{{"name":"http","port":5001,"protocol":"TCP"}}],"endpoints":[{{"addresses":["{}"],"conditions":{{"ready":true}}}},{{"addresses":["{}"],"conditions":{{"ready":true}}}}]}}"#,
        ip(0x0A80_0000, 2 * i),
        ip(0x0A80_0000, 2 * i + 1),
        name = service_name(i),
    )
}

/// The documents for `n` Services: each Service followed by its EndpointSlice.
pub fn documents(n: u32) -> impl Iterator<Item = String> {
    (0..n).flat_map(|i| [service(i), slice(i)])
}
