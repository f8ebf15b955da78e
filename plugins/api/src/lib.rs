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
//! Each kind's documentation says why it has its class. A third-party
//! plugin cannot add kinds here; it declares its own [`Kind`] types (see
//! `examples/echo-plugin`).
//!
//! Signal topics are in [`topics`]; the routing helpers every per-user
//! plugin uses (look the owner up, forward, retry) in [`routing`].

pub use gestor_sdk::{Empty, Kind, KindClass};

/// Declare kinds: `Name = "wire.name", Class, Request => Reply;`, each with
/// its documentation, and the module's `KINDS` list.
macro_rules! kinds {
    (
        $(@extra [$($extra:ty),* $(,)?];)?
        $(
            $(#[$doc:meta])*
            $name:ident = $wire:literal, $class:ident, $req:ty => $rep:ty;
        )*
    ) => {
        $(
            $(#[$doc])*
            #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
            pub struct $name;

            impl $crate::Kind for $name {
                const NAME: &'static str = $wire;
                const CLASS: $crate::KindClass = $crate::KindClass::$class;
                type Request = $req;
                type Reply = $rep;
            }
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

/// A kind's name and class, for tables and checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KindInfo {
    pub name: &'static str,
    pub class: KindClass,
}

impl KindInfo {
    pub const fn of<K: Kind>() -> KindInfo {
        KindInfo {
            name: K::NAME,
            class: K::CLASS,
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
    fn topics_are_not_kinds() {
        for t in topics::ALL {
            assert!(find(t).is_none(), "{t} is both a topic and a kind");
        }
    }
}
