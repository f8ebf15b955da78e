//! # gestor-api — every request kind of the gestor services, declared once
//!
//! Each request kind is a zero-sized type implementing [`Kind`]: its wire
//! name, its [`KindClass`] (who may send it), its request type and its reply
//! type. Plugins serve and call kinds through these types
//! (`ctx.serve::<ring::Lookup>(…)`, `ctx.call::<dir::Login>(url, &body, t)`);
//! the host's client code uses them too. Plugins still never link each
//! other's code: what they share is these plain message types.
//!
//! Classes (enforced by the host's security layer):
//! * `client` — anyone may call it over the network;
//! * `internal` — only admitted gestores may call it over the network;
//! * `local` — only from inside the same process (`call_local`).
//!
//! Lanes (how the host schedules it): a kind marked `upkeep` (ring upkeep
//! and copies, answered from memory and the store) may run on the request
//! workers reserved for gestores; every other kind is client work, whoever
//! sends it (see [`Kind::UPKEEP`]).
//!
//! Each kind's documentation says why it has its class. A third-party
//! plugin cannot add kinds here; it declares its own [`Kind`] types (see
//! `examples/echo-plugin`).
//!
//! Signal topics are in [`topics`]; the routing helpers every per-user
//! plugin uses (look the owner up, forward, retry) in [`routing`].

pub use gestor_sdk::{Empty, Kind, KindClass};

/// Declare kinds: `Name = "wire.name", Class, Request => Reply;` (with
/// `Class + fast_path` for a kind tried on the I/O thread first, see
/// [`Kind::FAST_PATH`], and `+ upkeep` for one that may run on the workers
/// reserved for gestores, see [`Kind::UPKEEP`]), each with its
/// documentation, and the module's `KINDS` list.
macro_rules! kinds {
    (
        $(@extra [$($extra:ty),* $(,)?];)?
        $(
            $(#[$doc:meta])*
            $name:ident = $wire:literal, $class:ident $(+ $lane:ident)*, $req:ty => $rep:ty;
        )*
    ) => {
        $(
            $(#[$doc])*
            #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
            pub struct $name;

            impl $crate::Kind for $name {
                const NAME: &'static str = $wire;
                const CLASS: $crate::KindClass = $crate::KindClass::$class;
                const FAST_PATH: bool = $crate::lane_set(&[$(stringify!($lane)),*], "fast_path");
                const UPKEEP: bool = $crate::lane_set(&[$(stringify!($lane)),*], "upkeep");
                type Request = $req;
                type Reply = $rep;
            }
            const _: () = assert!(
                $crate::lanes_known(&[$(stringify!($lane)),*]),
                concat!("kind ", $wire, ": a lane is fast_path or upkeep")
            );
        )*

        /// Every kind declared in this module.
        pub const KINDS: &[$crate::KindInfo] = &[
            $($($crate::KindInfo::of::<$extra>(),)*)?
            $($crate::KindInfo::of::<$name>(),)*
        ];
    };
}

pub mod chat;
pub mod dir;
pub mod initial;
pub mod mail;
pub mod mailbox;
pub mod node;
pub mod presence;
pub mod replica;
pub mod ring;
pub mod routing;
pub mod status;
pub mod topics;
pub mod user;

/// Whether `lanes` (the `+ …` of a declaration) names `lane`.
#[doc(hidden)]
pub const fn lane_set(lanes: &[&str], lane: &str) -> bool {
    let mut i = 0;
    while i < lanes.len() {
        if same(lanes[i], lane) {
            return true;
        }
        i += 1;
    }
    false
}

/// Whether every one of `lanes` is a lane this macro knows.
#[doc(hidden)]
pub const fn lanes_known(lanes: &[&str]) -> bool {
    let mut i = 0;
    while i < lanes.len() {
        if !same(lanes[i], "fast_path") && !same(lanes[i], "upkeep") {
            return false;
        }
        i += 1;
    }
    true
}

const fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// A kind's name, class and lane, for tables and checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KindInfo {
    pub name: &'static str,
    pub class: KindClass,
    /// [`Kind::UPKEEP`].
    pub upkeep: bool,
}

impl KindInfo {
    pub const fn of<K: Kind>() -> KindInfo {
        KindInfo {
            name: K::NAME,
            class: K::CLASS,
            upkeep: K::UPKEEP,
        }
    }
}

/// Every kind declared in this crate.
pub fn all() -> Vec<KindInfo> {
    [
        ring::KINDS,
        user::KINDS,
        dir::KINDS,
        replica::KINDS,
        initial::KINDS,
        mail::KINDS,
        mailbox::KINDS,
        presence::KINDS,
        chat::KINDS,
        node::KINDS,
        status::KINDS,
    ]
    .concat()
}

/// The kind named `name`, if this crate declares it.
pub fn find(name: &str) -> Option<KindInfo> {
    all().into_iter().find(|k| k.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn names_are_unique_and_dotted() {
        let all = all();
        let names: BTreeSet<&str> = all.iter().map(|k| k.name).collect();
        assert_eq!(names.len(), all.len(), "a kind is declared twice");
        for k in &all {
            let (prefix, rest) = k.name.split_once('.').expect("kind names are prefix.name");
            assert!(!prefix.is_empty() && !rest.is_empty(), "{}", k.name);
        }
    }

    #[test]
    fn prefixes_match_their_classes() {
        for k in all() {
            if k.name.starts_with(status::PREFIX) {
                assert_eq!(k.class, KindClass::Local, "{} is a status section", k.name);
            }
            if k.name.starts_with("user.") || k.name.starts_with("mail.") {
                assert_eq!(k.class, KindClass::Client, "{} is client-facing", k.name);
            }
            if k.name.starts_with("mailbox.") {
                assert_eq!(k.class, KindClass::Internal, "{} is owner side", k.name);
            }
        }
        assert!(all().iter().any(|k| k.name.starts_with(node::PREFIX)));
    }

    #[test]
    fn only_internal_kinds_are_upkeep() {
        let upkeep: BTreeSet<&str> = all().iter().filter(|k| k.upkeep).map(|k| k.name).collect();
        for k in all().iter().filter(|k| k.upkeep) {
            assert_eq!(k.class, KindClass::Internal, "{}", k.name);
        }
        // The owner side of a client's request is client work.
        for k in all() {
            if k.name.starts_with("dir.") || k.name.starts_with("presence.") {
                assert!(!k.upkeep, "{} is a client's request forwarded", k.name);
            }
        }
        assert!(upkeep.contains("ring.rpc") && upkeep.contains("replica.put"));
        assert!(lane_set(&["upkeep"], "upkeep") && !lane_set(&["fast_path"], "upkeep"));
        assert!(lanes_known(&[]) && !lanes_known(&["fast"]));
    }

    #[test]
    fn topics_are_not_kinds() {
        for t in topics::ALL {
            assert!(find(t).is_none(), "{t} is both a topic and a kind");
        }
    }
}

/// The merged message types keep the wire shapes of the copies they replace.
#[cfg(test)]
mod wire_shapes {
    use crate::chat::ChatMessage;
    use crate::mail::PutMail;
    use crate::mailbox::Held;
    use crate::presence::Presence;
    use crate::user::{Credentials, Found};
    use gestor_sdk::wire::{from_value, to_value};
    use gestor_sdk::Value;

    fn map(pairs: &[(&str, Value)]) -> Value {
        Value::Map(
            pairs
                .iter()
                .map(|(k, v)| (Value::Text(k.to_string()), v.clone()))
                .collect(),
        )
    }
    fn text(s: &str) -> Value {
        Value::Text(s.into())
    }
    fn uint(n: u64) -> Value {
        Value::Integer(n.into())
    }
    fn message() -> ChatMessage {
        ChatMessage {
            id: "0a".into(),
            from: "alice".into(),
            to: "bob".into(),
            seq: 1,
            sent_ms: 2,
            text: "hi".into(),
        }
    }

    #[test]
    fn credentials_address_is_optional_both_ways() {
        let c = Credentials {
            username: "alice".into(),
            password: "pw".into(),
            address: None,
        };
        // Absent, as the CLI always sent it.
        assert_eq!(
            to_value(&c),
            map(&[("username", text("alice")), ("password", text("pw"))])
        );
        // Absent or null are both accepted.
        let with_null = map(&[
            ("username", text("alice")),
            ("password", text("pw")),
            ("address", Value::Null),
        ]);
        assert_eq!(from_value::<Credentials>(&with_null).unwrap(), c);
    }

    #[test]
    fn found_without_signal_reads() {
        let v = map(&[
            ("user", text("alice")),
            ("address", text("h:1")),
            ("online", Value::Bool(true)),
            ("last_seen_ms", uint(5)),
            (
                "last_update",
                map(&[
                    ("wall_ms", uint(1)),
                    ("logical", uint(0)),
                    ("node", uint(7)),
                ]),
            ),
            ("gestor", text("tcp://g")),
            ("hops", uint(0)),
        ]);
        let f: Found = from_value(&v).unwrap();
        assert_eq!(f.signal, "");
    }

    #[test]
    fn flattened_messages_are_flat() {
        let put = PutMail {
            token: "t".into(),
            mail: message(),
        };
        let v = to_value(&put);
        let keys: Vec<&str> = v
            .as_map()
            .unwrap()
            .iter()
            .map(|(k, _)| k.as_text().unwrap())
            .collect();
        assert_eq!(
            keys,
            ["token", "id", "from", "to", "seq", "sent_ms", "text"]
        );
        // An item stored before `stored_ms`/`bounce` existed still reads.
        let held: Held = from_value(&to_value(&message())).unwrap();
        assert_eq!(held.stored_ms, 0);
        assert_eq!(held.bounce, None);
        assert_eq!(held.holder(), "bob");
    }

    #[test]
    fn presence_error_defaults() {
        let v = map(&[
            ("user", text("bob")),
            ("exists", Value::Bool(true)),
            ("online", Value::Bool(false)),
            ("address", text("")),
            ("last_seen_ms", uint(0)),
        ]);
        assert_eq!(from_value::<Presence>(&v).unwrap().error, None);
    }
}
