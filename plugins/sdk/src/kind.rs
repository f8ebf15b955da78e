//! Typed request kinds.
//!
//! A request kind is a name on the wire (`"ring.lookup"`) with a request
//! body, a reply body and a [`KindClass`] saying who may send it. A [`Kind`]
//! is a zero-sized type that ties the four together, so a handler is
//! registered with [`PluginContext::serve`](crate::PluginContext::serve) and
//! a request sent with [`PluginContext::call`](crate::PluginContext::call)
//! without repeating the name or the body types at every site.
//!
//! The gestor's own kinds are declared once, in the `gestor-api` crate. A
//! third-party plugin declares its kinds in its own code (see
//! `examples/echo-plugin`).

use serde::de::{Deserialize, DeserializeOwned, Deserializer, IgnoredAny};
use serde::ser::{Serialize, Serializer};

/// Who may send a request kind. The host records it with every handler;
/// the security layer enforces it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KindClass {
    /// Anyone may call it over the network: clients, operator tools, other
    /// gestores.
    Client,
    /// Only admitted gestores may call it over the network (gestor to
    /// gestor traffic); also callable locally.
    Internal,
    /// Only callable from inside the same process
    /// ([`PluginContext::call_local`](crate::PluginContext::call_local)),
    /// never from the network.
    Local,
}

impl KindClass {
    pub fn as_str(self) -> &'static str {
        match self {
            KindClass::Client => "client",
            KindClass::Internal => "internal",
            KindClass::Local => "local",
        }
    }
}

impl std::fmt::Display for KindClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A request kind: its wire name, its class, and the types of its bodies.
pub trait Kind {
    /// The name on the wire (`kind` of the request envelope).
    const NAME: &'static str;
    /// Who may send it.
    const CLASS: KindClass;
    /// Try it on the transport's I/O thread first: its handler usually
    /// answers from memory and the local store. A call it makes there that
    /// would wait on another gestor is refused at once
    /// ([`TransportError::WouldBlock`](crate::TransportError::WouldBlock)),
    /// and the request is then served again, from the start, by a worker;
    /// so only kinds that change nothing before such a call may say yes.
    const FAST_PATH: bool = false;
    /// Ring upkeep or copies between gestores: an internal kind whose
    /// handler answers from this gestor's memory and store and never waits
    /// on another gestor or on a password hash. Only such kinds may run on
    /// the request workers reserved for gestores
    /// (`transport.reserved_for_gestores`); every other kind is client
    /// work whoever sends it, so that a forwarded registration cannot hold
    /// the workers the ring's own upkeep needs.
    const UPKEEP: bool = false;
    /// The request body.
    type Request: Serialize + DeserializeOwned;
    /// The reply body.
    type Reply: Serialize + DeserializeOwned;
}

/// The body of a kind that takes none: sent as CBOR `null`, and any body
/// is accepted (and ignored) on receipt.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Empty;

impl Serialize for Empty {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_unit()
    }
}

impl<'de> Deserialize<'de> for Empty {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        IgnoredAny::deserialize(deserializer).map(|_| Empty)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{from_value, to_value};
    use ciborium::Value;

    #[test]
    fn empty_is_null_and_accepts_anything() {
        assert_eq!(to_value(&Empty), Value::Null);
        assert_eq!(to_value(&()), Value::Null);
        for v in [
            Value::Null,
            Value::Text("x".into()),
            Value::Map(vec![(Value::Text("a".into()), Value::Integer(1.into()))]),
        ] {
            assert_eq!(from_value::<Empty>(&v).unwrap(), Empty);
        }
    }

    #[test]
    fn class_names() {
        for c in [KindClass::Client, KindClass::Internal, KindClass::Local] {
            assert_eq!(to_value(&c), Value::Text(c.as_str().into()));
        }
    }
}
