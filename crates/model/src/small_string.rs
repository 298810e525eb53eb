//! [`SmallString`]: an immutable string kept in place when short, for the names, addresses
//! and labels of the Kubernetes objects the agent holds for as long as they are in force.
//!
//! An object's strings are short (`svc-123`, `bench`, `10.128.0.7`, `http`) and each `String`
//! is a block of its own: at least 32 bytes of glibc chunk and a hole when the request that
//! carried it is freed around it. At 10,000 Services with one EndpointSlice each, 11 of the
//! 19 blocks per Service were such strings (352 bytes of chunks). A `SmallString` is the size
//! of a `String` (24 bytes), keeps up to [`INLINE`] bytes in place, the well-known label keys
//! as `&'static str`, and anything longer in one block of exactly its length.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The longest string kept in place, in bytes.
pub const INLINE: usize = 22;

/// Strings many objects carry that do not fit in place, shared instead of copied.
const WELL_KNOWN: &[&str] = &[
    crate::k8s::SERVICE_NAME_LABEL,
    crate::k8s::NAMESPACE_NAME_LABEL,
    "endpointslice.kubernetes.io/managed-by",
    "endpointslice-controller.k8s.io",
    "app.kubernetes.io/managed-by",
    "service.kubernetes.io/headless",
];

#[derive(Clone)]
enum Repr {
    Inline { len: u8, bytes: [u8; INLINE] },
    Static(&'static str),
    Heap(Box<str>),
}

/// An immutable string: up to [`INLINE`] bytes in place, well-known label keys shared, longer
/// ones in a block of exactly their length. Compares, orders and hashes as its `str`, reads
/// and writes as a JSON string, and derefs to `str`.
#[derive(Clone)]
pub struct SmallString(Repr);

impl SmallString {
    /// The empty string.
    pub const fn new() -> Self {
        Self(Repr::Inline {
            len: 0,
            bytes: [0; INLINE],
        })
    }

    /// A string that lives for the program's life, kept by reference.
    pub const fn from_static(s: &'static str) -> Self {
        Self(Repr::Static(s))
    }

    /// The string.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            // The bytes were copied from a `str` of `len` bytes, so they are UTF-8: the check
            // cannot fail (and `unsafe` is forbidden in this crate).
            Repr::Inline { len, bytes } => {
                std::str::from_utf8(&bytes[..usize::from(*len)]).unwrap_or_default()
            }
            Repr::Static(s) => s,
            Repr::Heap(s) => s,
        }
    }

    /// Whether the string is kept in a block of its own (too long to keep in place and not a
    /// well-known one).
    pub fn is_heap_allocated(&self) -> bool {
        matches!(self.0, Repr::Heap(_))
    }
}

impl Default for SmallString {
    fn default() -> Self {
        Self::new()
    }
}

impl From<&str> for SmallString {
    fn from(s: &str) -> Self {
        if s.len() <= INLINE {
            let mut bytes = [0; INLINE];
            bytes[..s.len()].copy_from_slice(s.as_bytes());
            // INLINE < 256.
            let len = s.len() as u8;
            return Self(Repr::Inline { len, bytes });
        }
        if let Some(known) = WELL_KNOWN.iter().find(|k| **k == s) {
            return Self(Repr::Static(known));
        }
        Self(Repr::Heap(Box::from(s)))
    }
}

impl From<&String> for SmallString {
    fn from(s: &String) -> Self {
        Self::from(s.as_str())
    }
}

impl From<String> for SmallString {
    fn from(s: String) -> Self {
        if s.len() <= INLINE || WELL_KNOWN.contains(&s.as_str()) {
            Self::from(s.as_str())
        } else {
            Self(Repr::Heap(s.into_boxed_str()))
        }
    }
}

impl From<&SmallString> for SmallString {
    fn from(s: &SmallString) -> Self {
        s.clone()
    }
}

impl From<SmallString> for String {
    fn from(s: SmallString) -> Self {
        match s.0 {
            Repr::Heap(b) => b.into_string(),
            _ => s.as_str().to_owned(),
        }
    }
}

impl From<&SmallString> for String {
    fn from(s: &SmallString) -> Self {
        s.as_str().to_owned()
    }
}

impl Deref for SmallString {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for SmallString {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl Borrow<str> for SmallString {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq for SmallString {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for SmallString {}

impl PartialOrd for SmallString {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for SmallString {
    fn cmp(&self, other: &Self) -> Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl Hash for SmallString {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl PartialEq<str> for SmallString {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for SmallString {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<String> for SmallString {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other.as_str()
    }
}

impl PartialEq<SmallString> for str {
    fn eq(&self, other: &SmallString) -> bool {
        self == other.as_str()
    }
}

impl PartialEq<SmallString> for &str {
    fn eq(&self, other: &SmallString) -> bool {
        *self == other.as_str()
    }
}

impl PartialEq<SmallString> for String {
    fn eq(&self, other: &SmallString) -> bool {
        self.as_str() == other.as_str()
    }
}

impl fmt::Debug for SmallString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for SmallString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for SmallString {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for SmallString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = SmallString;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            // Read in place: a short string never passes through a `String` of its own.
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(SmallString::from(v))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(SmallString::from(v))
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn is_the_size_of_a_string_and_so_is_its_option() {
        assert_eq!(
            std::mem::size_of::<SmallString>(),
            std::mem::size_of::<String>()
        );
        assert_eq!(
            std::mem::size_of::<Option<SmallString>>(),
            std::mem::size_of::<String>()
        );
    }

    #[test]
    fn short_strings_and_well_known_keys_stay_in_place() {
        assert!(!SmallString::from("").is_heap_allocated());
        assert!(!SmallString::from("x".repeat(INLINE).as_str()).is_heap_allocated());
        assert!(SmallString::from("x".repeat(INLINE + 1).as_str()).is_heap_allocated());
        assert!(!SmallString::from(crate::k8s::SERVICE_NAME_LABEL).is_heap_allocated());
        assert!(!SmallString::from(crate::k8s::SERVICE_NAME_LABEL.to_owned()).is_heap_allocated());
    }

    #[test]
    fn reads_escaped_json_and_writes_it_back() {
        let s: SmallString = serde_json::from_str(r#""a\"b\u00e9""#).expect("string");
        assert_eq!(s, "a\"bé");
        assert_eq!(serde_json::to_string(&s).expect("json"), r#""a\"bé""#);
        assert!(serde_json::from_str::<SmallString>("3").is_err());
    }

    proptest! {
        #[test]
        fn behaves_as_its_str(a in "\\PC{0,40}", b in "\\PC{0,40}") {
            let (sa, sb) = (SmallString::from(a.as_str()), SmallString::from(b.clone()));
            prop_assert_eq!(sa.as_str(), a.as_str());
            prop_assert_eq!(sb.as_str(), b.as_str());
            prop_assert_eq!(sa == sb, a == b);
            prop_assert_eq!(sa.cmp(&sb), a.cmp(&b));
            let hash = |x: &dyn Fn(&mut std::collections::hash_map::DefaultHasher)| {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                x(&mut h);
                h.finish()
            };
            prop_assert_eq!(hash(&|h| sa.hash(h)), hash(&|h| a.as_str().hash(h)));
            prop_assert_eq!(String::from(sa.clone()), a.clone());
            let json = serde_json::to_string(&sa).expect("json");
            prop_assert_eq!(&json, &serde_json::to_string(&a).expect("json"));
            prop_assert_eq!(serde_json::from_str::<SmallString>(&json).expect("reads"), sa);
        }
    }
}
