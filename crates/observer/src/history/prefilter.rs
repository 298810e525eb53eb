//! Skipping by pod before decoding: a conservative reading of a request's whitelist.
//!
//! Only `source_pod` and `destination_pod` are looked at; the exact FlowFilter semantics are
//! applied afterwards to every flow that gets through ([`crate::filter::FlowFilters`]). The
//! prefilter may let through flows the filters then refuse, never the reverse: a pod prefix
//! without a namespace is taken to match in any namespace, a superset of what Hubble means.

use super::block::EndpointName;
use crate::proto::flow::FlowFilter;

/// `namespace/prefix` or `prefix`.
#[derive(Clone, Debug)]
struct PodPrefix {
    namespace: Option<String>,
    prefix: String,
}

impl PodPrefix {
    /// Read as the filters read it (`crate::filter`): the part after a second `/` is ignored,
    /// an empty namespace is any namespace.
    fn parse(s: &str) -> Self {
        let mut parts = s.split('/');
        let first = parts.next().unwrap_or_default();
        match parts.next() {
            Some(p) => Self {
                namespace: (!first.is_empty()).then(|| first.to_owned()),
                prefix: p.to_owned(),
            },
            None => Self {
                namespace: None,
                prefix: first.to_owned(),
            },
        }
    }

    /// As the filters match, but for a bare pod name, which they take to mean namespace
    /// `default` and this any namespace. An endpoint without a pod name matches an empty prefix
    /// (`ns/` names every endpoint of the namespace).
    fn matches(&self, namespace: &str, pod: &str) -> bool {
        !(namespace.is_empty() && pod.is_empty())
            && self.namespace.as_deref().is_none_or(|ns| ns == namespace)
            && pod.starts_with(&self.prefix)
    }

    fn matches_key(&self, key: &str) -> bool {
        key.split_once('/')
            .is_some_and(|(ns, pod)| self.matches(ns, pod))
    }
}

/// One whitelist filter's pod requirements: `None` for a side it does not constrain.
#[derive(Clone, Debug)]
struct Alternative {
    src: Option<Vec<PodPrefix>>,
    dst: Option<Vec<PodPrefix>>,
}

/// Which flows may match a whitelist, judged by their pods alone.
#[derive(Clone, Debug, Default)]
pub struct PodPrefilter {
    /// `None`: every flow may match (no whitelist, or a filter that names no pod).
    alternatives: Option<Vec<Alternative>>,
}

/// Alternatives beyond this are not worth a bit mask: the prefilter lets everything through.
const MAX_ALTERNATIVES: usize = 64;

impl PodPrefilter {
    /// The prefilter of a request's whitelist.
    pub fn new(whitelist: &[FlowFilter]) -> Self {
        let side =
            |v: &[String]| (!v.is_empty()).then(|| v.iter().map(|s| PodPrefix::parse(s)).collect());
        let alts: Vec<Alternative> = whitelist
            .iter()
            .map(|f| Alternative {
                src: side(&f.source_pod),
                dst: side(&f.destination_pod),
            })
            .collect();
        let useful = !alts.is_empty()
            && alts.len() <= MAX_ALTERNATIVES
            && alts.iter().all(|a| a.src.is_some() || a.dst.is_some());
        Self {
            alternatives: useful.then_some(alts),
        }
    }

    /// Whether it skips anything at all.
    pub fn is_active(&self) -> bool {
        self.alternatives.is_some()
    }

    /// Whether a block with these `namespace/pod` sets may hold a match.
    pub fn block_may_match(&self, src_pods: &[String], dst_pods: &[String]) -> bool {
        let Some(alts) = &self.alternatives else {
            return true;
        };
        // The pod sets name endpoints with a pod name only: an empty prefix, which also
        // matches endpoints without one, cannot be judged by them.
        let any = |ps: &Option<Vec<PodPrefix>>, keys: &[String]| {
            ps.as_ref().is_none_or(|ps| {
                ps.iter()
                    .any(|p| p.prefix.is_empty() || keys.iter().any(|k| p.matches_key(k)))
            })
        };
        alts.iter()
            .any(|a| any(&a.src, src_pods) && any(&a.dst, dst_pods))
    }

    /// Per endpoint of a block's dictionary (index 0: no endpoint, then the dictionary's), the
    /// alternatives it satisfies as source and as destination, as bit masks: a flow may match
    /// when `src[s] & dst[d] != 0`. `None` when inactive.
    pub fn masks(&self, endpoints: &[EndpointName]) -> Option<(Vec<u64>, Vec<u64>)> {
        let alts = self.alternatives.as_ref()?;
        let mask = |pick: fn(&Alternative) -> &Option<Vec<PodPrefix>>,
                    ep: Option<&EndpointName>| {
            let mut m = 0u64;
            for (i, a) in alts.iter().enumerate() {
                let ok = match pick(a) {
                    None => true,
                    Some(ps) => {
                        ep.is_some_and(|e| ps.iter().any(|p| p.matches(&e.namespace, &e.pod_name)))
                    }
                };
                if ok {
                    m |= 1 << i;
                }
            }
            m
        };
        let eps = std::iter::once(None).chain(endpoints.iter().map(Some));
        let src = eps.clone().map(|e| mask(|a| &a.src, e)).collect();
        let dst = eps.map(|e| mask(|a| &a.dst, e)).collect();
        Some((src, dst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(ns: &str, pod: &str) -> EndpointName {
        EndpointName {
            namespace: ns.into(),
            pod_name: pod.into(),
        }
    }

    #[test]
    fn pods_with_and_without_namespace_and_alternatives() {
        let p = PodPrefilter::new(&[
            FlowFilter {
                destination_pod: vec!["prod/web".into()],
                ..FlowFilter::default()
            },
            FlowFilter {
                source_pod: vec!["client".into()],
                ..FlowFilter::default()
            },
        ]);
        assert!(p.is_active());
        assert!(p.block_may_match(&[], &["prod/web-1".into()]));
        assert!(!p.block_may_match(&[], &["dev/web-1".into()]));
        assert!(p.block_may_match(&["any/client-7".into()], &[]));
        assert!(!p.block_may_match(&["any/server".into()], &["prod/db".into()]));
        let (src, dst) = p
            .masks(&[ep("prod", "web-1"), ep("x", "client")])
            .expect("active");
        // index 0 is "no endpoint"; 1 is prod/web-1, 2 is x/client
        assert_eq!(dst[1] & src[0], 0b01);
        assert_eq!(src[2] & dst[0], 0b10);
        assert_eq!(src[1] & dst[2], 0);
    }

    #[test]
    fn a_namespace_alone_also_lets_endpoints_without_a_pod_name_through() {
        let p = PodPrefilter::new(&[FlowFilter {
            destination_pod: vec!["dev/".into(), "/web".into(), "prod/db/x".into()],
            ..FlowFilter::default()
        }]);
        // No pod set names an endpoint without a pod name: the block cannot be skipped.
        assert!(p.block_may_match(&[], &[]));
        let (src, dst) = p
            .masks(&[
                ep("dev", ""),
                ep("any", "web-1"),
                ep("prod", "db-0"),
                ep("", ""),
            ])
            .expect("active");
        assert!([1, 2, 3].iter().all(|i| src[0] & dst[*i] != 0));
        assert_eq!(src[0] & dst[4], 0, "no namespace, no pod: no match");
    }

    #[test]
    fn a_filter_without_pods_makes_it_let_everything_through() {
        let p = PodPrefilter::new(&[
            FlowFilter {
                destination_pod: vec!["prod/web".into()],
                ..FlowFilter::default()
            },
            FlowFilter {
                verdict: vec![2],
                ..FlowFilter::default()
            },
        ]);
        assert!(!p.is_active());
        assert!(p.block_may_match(&[], &[]));
        assert!(PodPrefilter::new(&[]).masks(&[]).is_none());
    }
}
