#![allow(clippy::unwrap_used)]

use super::*;
use ciliate_model::l7::FqdnAnswer;
use proptest::prelude::*;

const T0: u64 = 1_800_000_000;

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn answer(endpoint: u16, name: &str, ips: &[&str], ttl: u32) -> FqdnLearned {
    FqdnLearned {
        id: 1,
        endpoint,
        endpoint_ip: Ipv4Addr::new(10, 200, 0, endpoint as u8),
        names: vec![FqdnAnswer {
            name: name.to_owned(),
            ips: ips.iter().map(|s| ip(s)).collect(),
            ttl,
        }],
    }
}

fn limits(min_ttl: u32, max: usize) -> CacheLimits {
    CacheLimits {
        min_ttl,
        max_ips_per_hostname: max,
    }
}

fn never_open(_: Ipv4Addr, _: Ipv4Addr) -> bool {
    false
}

#[test]
fn an_answer_is_learned_once_and_its_names_reported() {
    let mut c = FqdnCache::new(limits(0, 50));
    let l = c.learn(&answer(1, "API.example.com", &["192.0.2.1"], 30), T0);
    assert_eq!(l.changed, BTreeSet::from(["api.example.com.".to_owned()]));
    assert!(l.refused.is_empty());
    assert_eq!(
        c.ips_of("api.example.com."),
        BTreeSet::from([ip("192.0.2.1")])
    );
    assert!(l.persist);
    // The same answer again changes nothing policy sees, and is not worth saving yet.
    let l = c.learn(&answer(1, "api.example.com.", &["192.0.2.1"], 30), T0 + 5);
    assert!(l.changed.is_empty());
    assert!(!l.persist);
    // A minute later it is (the expiry moved).
    assert!(
        c.learn(&answer(1, "api.example.com.", &["192.0.2.1"], 30), T0 + 60)
            .persist
    );
    // Another endpoint learning the same address: still nothing new for policy.
    let l = c.learn(&answer(2, "api.example.com.", &["192.0.2.1"], 30), T0 + 5);
    assert!(l.changed.is_empty());
    assert_eq!(c.list(T0 + 5, None)[0].endpoints, vec![1, 2]);
}

#[test]
fn the_ttl_counts_with_the_minimum() {
    let mut c = FqdnCache::new(limits(60, 50));
    c.learn(&answer(1, "short.example.com.", &["192.0.2.1"], 5), T0);
    c.learn(&answer(1, "long.example.com.", &["192.0.2.2"], 600), T0);
    assert_eq!(c.next_expiry(), Some(T0 + 60));
    // Nothing before its time.
    assert!(c.expire(T0 + 59, never_open).is_empty());
    let gone = c.expire(T0 + 60, never_open);
    assert_eq!(gone, BTreeSet::from(["short.example.com.".to_owned()]));
    assert!(c.ips_of("short.example.com.").is_empty());
    assert_eq!(c.next_expiry(), Some(T0 + 600));
    assert_eq!(c.list(T0 + 100, None)[0].ttl_left, 500);
    c.expire(T0 + 600, never_open);
    assert_eq!(c.next_expiry(), None);
    assert_eq!(c, FqdnCache::new(limits(60, 50)));
}

#[test]
fn a_new_answer_pushes_the_expiry_out() {
    let mut c = FqdnCache::new(limits(0, 50));
    c.learn(&answer(1, "a.example.com.", &["192.0.2.1"], 10), T0);
    c.learn(&answer(1, "a.example.com.", &["192.0.2.1"], 10), T0 + 8);
    assert!(c.expire(T0 + 10, never_open).is_empty());
    assert_eq!(c.expire(T0 + 18, never_open).len(), 1);
}

#[test]
fn the_cap_keeps_the_addresses_that_expire_last() {
    let mut c = FqdnCache::new(limits(0, 2));
    assert!(
        !c.learn(&answer(1, "a.example.com.", &["192.0.2.1"], 10), T0)
            .evicted
    );
    assert!(
        !c.learn(&answer(1, "a.example.com.", &["192.0.2.2"], 10), T0 + 1)
            .evicted
    );
    // The third evicts the first: the proxy must be told (FqdnForget).
    assert!(
        c.learn(&answer(1, "a.example.com.", &["192.0.2.3"], 10), T0 + 2)
            .evicted
    );
    assert_eq!(
        c.ips_of("a.example.com."),
        BTreeSet::from([ip("192.0.2.2"), ip("192.0.2.3")])
    );
    // The cap is per endpoint: another endpoint keeps its own.
    c.learn(&answer(2, "a.example.com.", &["192.0.2.1"], 10), T0 + 3);
    assert_eq!(c.ips_of("a.example.com.").len(), 3);
}

#[test]
fn an_open_connection_keeps_an_expired_address_until_it_closes() {
    let mut c = FqdnCache::new(limits(0, 50));
    c.learn(
        &answer(1, "a.example.com.", &["192.0.2.1", "192.0.2.2"], 10),
        T0,
    );
    let src = Ipv4Addr::new(10, 200, 0, 1);
    let open_to_1 = |s: Ipv4Addr, d: Ipv4Addr| s == src && d == ip("192.0.2.1");
    let changed = c.expire(T0 + 10, open_to_1);
    assert_eq!(changed.len(), 1);
    assert_eq!(
        c.ips_of("a.example.com."),
        BTreeSet::from([ip("192.0.2.1")])
    );
    assert!(c.has_zombies());
    assert_eq!(c.next_expiry(), None);
    assert_eq!(c.list(T0 + 10, None)[0].zombies, vec![ip("192.0.2.1")]);
    // Still open: stays.
    assert!(c.expire(T0 + 40, open_to_1).is_empty());
    // A new answer revives it.
    let mut revived = c.clone();
    revived.learn(&answer(1, "a.example.com.", &["192.0.2.1"], 10), T0 + 41);
    assert!(!revived.has_zombies());
    // Closed: goes.
    assert_eq!(c.expire(T0 + 70, never_open).len(), 1);
    assert!(c.names().is_empty());
}

#[test]
fn clean_with_and_without_a_pattern() {
    let mut c = FqdnCache::new(limits(0, 50));
    c.learn(&answer(1, "a.s3.example.com.", &["192.0.2.1"], 10), T0);
    c.learn(&answer(2, "b.s3.example.com.", &["192.0.2.2"], 10), T0);
    c.learn(&answer(1, "api.example.com.", &["192.0.2.3"], 10), T0);
    let pattern = FqdnMatcher::new(None, Some("*.s3.example.com")).unwrap();
    let (names, entries) = c.clean(Some(&pattern));
    assert_eq!(names.len(), 2);
    assert_eq!(entries, 2);
    assert_eq!(
        c.names().keys().collect::<Vec<_>>(),
        vec!["api.example.com."]
    );
    let (names, entries) = c.clean(None);
    assert_eq!((names.len(), entries), (1, 1));
    assert!(c.names().is_empty());
}

#[test]
fn odd_names_are_refused_and_the_rest_learned() {
    let mut c = FqdnCache::new(limits(0, 50));
    let mut ev = answer(1, "exa mple.com.", &["192.0.2.1"], 10);
    ev.names.push(FqdnAnswer {
        name: "ok.example.com.".into(),
        ips: vec![ip("192.0.2.2")],
        ttl: 10,
    });
    let l = c.learn(&ev, T0);
    assert_eq!(l.refused, vec!["exa mple.com.".to_owned()]);
    assert_eq!(l.changed.len(), 1);
}

#[test]
fn deleted_endpoints_take_their_names_along() {
    let mut c = FqdnCache::new(limits(0, 50));
    c.learn(&answer(1, "a.example.com.", &["192.0.2.1"], 10), T0);
    c.learn(&answer(2, "a.example.com.", &["192.0.2.2"], 10), T0);
    assert_eq!(c.retain_endpoints(&BTreeSet::from([1])).len(), 1);
    assert_eq!(
        c.ips_of("a.example.com."),
        BTreeSet::from([ip("192.0.2.1")])
    );
    assert!(c.retain_endpoints(&BTreeSet::from([1])).is_empty());
}

#[test]
fn records_restore_the_same_cache() {
    let mut c = FqdnCache::new(limits(0, 50));
    c.learn(
        &answer(1, "a.example.com.", &["192.0.2.1", "192.0.2.9"], 10),
        T0,
    );
    c.learn(&answer(2, "b.example.com.", &["192.0.2.2"], 100), T0 + 1);
    c.expire(T0 + 10, |_, d| d == ip("192.0.2.1"));
    let back = FqdnCache::restore(c.limits(), c.records());
    assert_eq!(back, c);
    // A lower cap after a restart applies to what was saved.
    let capped = FqdnCache::restore(limits(0, 1), c.records());
    assert_eq!(capped.names().values().map(BTreeSet::len).sum::<usize>(), 2);
}

proptest! {
    /// Whatever arrives in whatever order: nobody keeps more than the cap per name, nothing
    /// outlives its expiry unless a connection holds it, the union view is what `ips_of`
    /// says, and a save/restore round trip changes nothing.
    #[test]
    fn invariants(
        events in proptest::collection::vec(
            (1u16..4, 0usize..3, proptest::collection::vec(0u8..8, 1..4), 0u32..200, 0u64..50),
            1..40,
        ),
        min_ttl in 0u32..100,
        max in 1usize..4,
        open_mask in any::<u8>(),
    ) {
        let names = ["a.example.com.", "b.example.com.", "c.example.org."];
        let mut c = FqdnCache::new(limits(min_ttl, max));
        let mut now = T0;
        for (ep, n, ips, ttl, dt) in events {
            now += dt;
            let ips: Vec<String> = ips.iter().map(|i| format!("192.0.2.{i}")).collect();
            let refs: Vec<&str> = ips.iter().map(String::as_str).collect();
            let before = c.names();
            let l = c.learn(&answer(ep, names[n], &refs, ttl), now);
            let after = c.names();
            for name in names {
                prop_assert_eq!(
                    l.changed.contains(name),
                    before.get(name) != after.get(name)
                );
            }
            let open = |_: Ipv4Addr, d: Ipv4Addr| open_mask & (1 << (d.octets()[3] % 8)) != 0;
            c.expire(now, open);
            for r in c.records() {
                prop_assert!(r.expires > now || (r.zombie && open(r.endpoint_ip, r.ip)));
                prop_assert!(r.expires < now + 200);
            }
            for (name, ips) in c.names() {
                prop_assert_eq!(&c.ips_of(&name), &ips);
            }
            let mut per: BTreeMap<(u16, String), usize> = BTreeMap::new();
            for r in c.records() {
                *per.entry((r.endpoint, r.name.clone())).or_default() += 1;
            }
            prop_assert!(per.values().all(|n| *n <= max));
            prop_assert_eq!(&FqdnCache::restore(c.limits(), c.records()), &c);
        }
    }
}
