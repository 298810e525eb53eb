//! Hubble's JSON lists fields in declaration order, so every message we share with Hubble
//! must declare its fields in Hubble's order (field numbers alone do not say it). Checked
//! against the copy of Hubble's own protos in tests/hubble-proto/.

use prost_reflect::DescriptorPool;

#[test]
fn our_messages_declare_their_fields_in_hubbles_order() {
    let hubble = protox::compile(
        [
            "flow/flow.proto",
            "observer/observer.proto",
            "relay/relay.proto",
        ],
        ["tests/hubble-proto"],
    )
    .expect("Hubble's protos compile");
    let hubble = DescriptorPool::from_file_descriptor_set(hubble).expect("Hubble's descriptors");
    let ours = protox::compile(
        [
            "flow/flow.proto",
            "observer/observer.proto",
            "relay/relay.proto",
        ],
        ["proto"],
    )
    .expect("our protos compile");
    let ours = DescriptorPool::from_file_descriptor_set(ours).expect("our descriptors");
    let declared = |m: &prost_reflect::MessageDescriptor| -> Vec<String> {
        m.descriptor_proto()
            .field
            .iter()
            .map(|f| f.name().to_owned())
            .collect()
    };
    let mut checked = 0;
    for ours_msg in ours.all_messages() {
        let Some(theirs) = hubble.get_message_by_name(ours_msg.full_name()) else {
            continue;
        };
        let (a, b) = (declared(&ours_msg), declared(&theirs));
        let common_ours: Vec<&String> = a.iter().filter(|f| b.contains(f)).collect();
        let common_theirs: Vec<&String> = b.iter().filter(|f| a.contains(f)).collect();
        assert_eq!(common_ours, common_theirs, "{}", ours_msg.full_name());
        checked += 1;
    }
    assert!(checked >= 30, "only {checked} messages in common");
}
