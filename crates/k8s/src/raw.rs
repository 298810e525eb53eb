//! The object type the watchers decode into: the JSON as it came, plus the few metadata
//! fields the watcher itself reads.
//!
//! kube's `DynamicObject` would do, but it decodes through serde's `flatten` (every object
//! buffered once more), types all of `metadata` (managedFields included), and would have to be
//! encoded back to JSON for the [`Document`](crate::Document). This type decodes each object
//! once, into the `serde_json::Value` the document keeps.

use std::borrow::Cow;

use kube::core::{ApiResource, DynamicResourceScope, ObjectMeta, Resource};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// One object of any kind, as JSON.
#[derive(Clone, Debug)]
pub(crate) struct RawObject {
    /// `name`, `namespace`, `uid` and `resourceVersion` copied out of `object` (the watcher
    /// resumes from the last `resourceVersion`; nothing else of it is read).
    metadata: ObjectMeta,
    /// The whole object.
    pub(crate) object: Value,
}

impl<'de> Deserialize<'de> for RawObject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let object = Value::deserialize(d)?;
        let field = |name: &str| {
            object
                .get("metadata")
                .and_then(|m| m.get(name))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let metadata = ObjectMeta {
            name: field("name"),
            namespace: field("namespace"),
            uid: field("uid"),
            resource_version: field("resourceVersion"),
            ..ObjectMeta::default()
        };
        Ok(RawObject { metadata, object })
    }
}

impl Resource for RawObject {
    type DynamicType = ApiResource;
    type Scope = DynamicResourceScope;

    fn kind(dt: &ApiResource) -> Cow<'_, str> {
        dt.kind.as_str().into()
    }

    fn group(dt: &ApiResource) -> Cow<'_, str> {
        dt.group.as_str().into()
    }

    fn version(dt: &ApiResource) -> Cow<'_, str> {
        dt.version.as_str().into()
    }

    fn api_version(dt: &ApiResource) -> Cow<'_, str> {
        dt.api_version.as_str().into()
    }

    fn plural(dt: &ApiResource) -> Cow<'_, str> {
        dt.plural.as_str().into()
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use kube::ResourceExt;
    use serde_json::json;

    use super::*;

    #[test]
    fn keeps_the_object_and_exposes_its_resource_version() {
        let v = json!({"metadata": {"name": "web", "namespace": "prod", "uid": "u1",
                                    "resourceVersion": "42", "labels": {"a": "b"}},
                       "spec": {"x": [1, 2]}});
        let raw: RawObject = serde_json::from_value(v.clone()).expect("decodes");
        assert_eq!(raw.resource_version().as_deref(), Some("42"));
        assert_eq!(raw.name_any(), "web");
        assert_eq!(raw.namespace().as_deref(), Some("prod"));
        assert_eq!(raw.object, v);
    }
}
