//! The control socket in process: commands applied in order, a bad command rejected whole
//! with the field named and the policy unchanged, records and stats forwarded.

use std::sync::Arc;
use std::time::Duration;

use ciliate_model::l7::{
    HttpMatch, HttpRecord, L7Parser, L7PeerRules, L7RecordType, L7Redirect, L7Verdict,
    ProxyCommand, ProxyEvent,
};
use ciliate_model::l7_wire::HttpFrame;
use ciliate_proxy::control::{self, ControlClient};
use ciliate_proxy::engine::{Counters, Engine, EngineConfig};
use ciliate_proxy::identity::StaticIdentities;
use ciliate_proxy::policy::{Policy, RedirectKey};
use tokio::sync::mpsc;

fn redirect(path: &str) -> L7Redirect {
    L7Redirect {
        endpoint: 5,
        endpoint_ip: "10.0.0.5".parse().expect("ip"),
        egress: false,
        proto: 6,
        port: 8080,
        parser: L7Parser::Http,
        proxy_port: 15002,
        rules: vec![L7PeerRules {
            peers: Some(vec![1000]),
            rule: 77,
            http: vec![HttpMatch {
                path: Some(path.into()),
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

async fn next(c: &mut ControlClient) -> ProxyEvent {
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(10), c.next())
            .await
            .expect("timely")
            .expect("read")
            .expect("open");
        if !matches!(ev, ProxyEvent::Stats(_)) {
            return ev;
        }
    }
}

#[tokio::test]
async fn commands_events_and_rejection() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ctl.sock");
    let (tx, rx) = mpsc::channel(16);
    let engine = Arc::new(Engine {
        policy: Arc::new(Policy::default()),
        identities: Arc::new(StaticIdentities::default()),
        events: tx.clone().into(),
        config: EngineConfig::default(),
        counters: Counters::default(),
    });
    let listener = control::bind(&path).expect("bind");
    tokio::spawn(control::serve(listener, engine.clone(), rx));
    let key = RedirectKey {
        endpoint_ip: "10.0.0.5".parse().expect("ip"),
        egress: false,
        port: 8080,
    };

    let mut c = ControlClient::connect(&path).await.expect("connect");
    c.send(&ProxyCommand::Snapshot {
        revision: 3,
        redirects: vec![redirect("/v1/.*")],
    })
    .await
    .expect("send");
    assert_eq!(next(&mut c).await, ProxyEvent::Applied { revision: 3 });
    assert!(engine.policy.current().get(&key).is_some());

    // An invalid regex: rejected, naming the field; revision 3 stays in force.
    c.send(&ProxyCommand::Endpoint {
        revision: 4,
        endpoint: 5,
        redirects: vec![redirect("/v1/(")],
    })
    .await
    .expect("send");
    match next(&mut c).await {
        ProxyEvent::Rejected { revision, reason } => {
            assert_eq!(revision, 4);
            assert!(reason.contains("rules[0].http[0].path"), "{reason}");
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    let table = engine.policy.current();
    assert_eq!(table.revision, 3);
    let r = table.get(&key).expect("still there");
    assert_eq!(r.redirect.rules[0].http[0].path.as_deref(), Some("/v1/.*"));

    // Not JSON at all.
    c.send_raw(b"{nonsense\n").await.expect("send");
    assert!(matches!(
        next(&mut c).await,
        ProxyEvent::Rejected { revision: 0, .. }
    ));

    // Records reach the agent.
    let rec = HttpRecord {
        time_ns: 1,
        record_type: L7RecordType::Request,
        endpoint: 5,
        egress: false,
        source: "10.0.0.9:3333".parse().expect("addr"),
        destination: "10.0.0.5:8080".parse().expect("addr"),
        source_identity: 1000,
        destination_identity: 2000,
        verdict: L7Verdict::Forwarded,
        rule: 77,
        method: "GET".into(),
        url: "http://svc/v1/x".into(),
        protocol: "HTTP/1.1".into(),
        code: 0,
        headers: vec![],
        latency_ns: 0,
        reason: None,
    };
    tx.send(ProxyEvent::Http(Box::new(rec.clone())).into())
        .await
        .expect("send");
    // As its frame, read in place by the agent.
    assert_eq!(
        next(&mut c).await,
        ProxyEvent::HttpFrame(HttpFrame::of_record(&rec))
    );

    // A new connection (a restarted agent) replaces the old one; the policy survives.
    drop(c);
    let mut c2 = ControlClient::connect(&path).await.expect("connect");
    assert_eq!(engine.policy.current().revision, 3);
    c2.send(&ProxyCommand::Endpoint {
        revision: 5,
        endpoint: 5,
        redirects: vec![],
    })
    .await
    .expect("send");
    assert_eq!(next(&mut c2).await, ProxyEvent::Applied { revision: 5 });
    assert!(engine.policy.current().is_empty());
}

/// The agent's FqdnForget (sent when `fqdn cache clean` or the per-name limit drops addresses
/// early) makes the proxy hold that endpoint's answers for the agent again; FqdnAllowed
/// confirms. Neither is a policy change.
#[tokio::test]
async fn fqdn_allowed_confirms_and_fqdn_forget_unconfirms() {
    use ciliate_model::l7::FqdnAnswer;
    use ciliate_proxy::dns::gate::AnswerGate;

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ctl.sock");
    let (tx, rx) = mpsc::channel(16);
    let engine = Arc::new(Engine {
        policy: Arc::new(Policy::default()),
        identities: Arc::new(StaticIdentities::default()),
        events: tx.clone().into(),
        config: EngineConfig::default(),
        counters: Counters::default(),
    });
    let gate = Arc::new(AnswerGate::default());
    let listener = control::bind(&path).expect("bind");
    tokio::spawn(control::serve_with_gate(
        listener,
        engine.clone(),
        rx,
        Some(gate.clone()),
    ));
    let names = |ep_ip: [u8; 4]| {
        vec![FqdnAnswer {
            name: "a.example.".into(),
            ips: vec![ep_ip.into()],
            ttl: 300,
        }]
    };
    let mut c = ControlClient::connect(&path).await.expect("connect");
    let mut revision = 0;
    // Commands are handled in order: the Applied of a Snapshot sent after them says they were.
    let mut send_and_sync = async |c: &mut ControlClient, cmd: ProxyCommand| {
        c.send(&cmd).await.expect("send");
        revision += 1;
        c.send(&ProxyCommand::Snapshot {
            revision,
            redirects: vec![],
        })
        .await
        .expect("send");
        assert_eq!(next(c).await, ProxyEvent::Applied { revision });
    };
    // The Snapshot forgets everything, so renew after each sync.
    send_and_sync(&mut c, ProxyCommand::FqdnForget { endpoint: None }).await;
    let id = gate.renewal(7, names([192, 0, 2, 1]));
    let other = gate.renewal(8, names([192, 0, 2, 1]));
    c.send(&ProxyCommand::FqdnAllowed { id })
        .await
        .expect("send");
    c.send(&ProxyCommand::FqdnAllowed { id: other })
        .await
        .expect("send");
    c.send(&ProxyCommand::FqdnForget { endpoint: Some(7) })
        .await
        .expect("send");
    // A no-op command whose Applied shows the three above were handled: an Endpoint of an
    // endpoint with no redirects (forgets only endpoint 9).
    revision += 1;
    c.send(&ProxyCommand::Endpoint {
        revision,
        endpoint: 9,
        redirects: vec![],
    })
    .await
    .expect("send");
    assert_eq!(next(&mut c).await, ProxyEvent::Applied { revision });
    assert!(
        !gate.confirmed(7, &names([192, 0, 2, 1])),
        "forgotten for endpoint 7"
    );
    assert!(
        gate.confirmed(8, &names([192, 0, 2, 1])),
        "still confirmed for endpoint 8"
    );
}
