//! Typed client side of the directory protocol (docs/PROTOCOL.md, `user.*`).

use crate::client::{Client, ClientError};
use gestor_sdk::transport::TransportOptions;
use gestor_sdk::wire::{to_cbor, to_value};
use gestor_sdk::{Timestamp, TransportError, Value};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Registered {
    pub username: String,
    pub gestor: String,
    pub hops: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    pub username: String,
    pub token: String,
    pub gestor: String,
    pub signal: String,
    pub alive_every_ms: u64,
    pub presence_timeout_ms: u64,
    pub hops: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Found {
    pub user: String,
    pub address: String,
    pub online: bool,
    pub last_seen_ms: u64,
    pub last_update: Timestamp,
    pub gestor: String,
    /// Signal URL of the responsible gestor (where alive signals go).
    #[serde(default)]
    pub signal: String,
    pub hops: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Done {
    pub ok: bool,
    pub hops: u32,
}

fn typed<T: DeserializeOwned>(v: Value) -> Result<T, ClientError> {
    v.deserialized().map_err(|e| ClientError::Malformed {
        url: "reply body".into(),
        reason: e.to_string(),
    })
}

#[derive(Serialize)]
struct Credentials<'a> {
    username: &'a str,
    password: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    address: Option<&'a str>,
}

#[derive(Serialize)]
struct Authenticated<'a> {
    username: &'a str,
    token: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    address: Option<&'a str>,
}

impl Client {
    pub fn register(&mut self, username: &str, password: &str) -> Result<Registered, ClientError> {
        typed(self.call(
            "user.register",
            to_value(&Credentials {
                username,
                password,
                address: None,
            }),
        )?)
    }

    pub fn login(
        &mut self,
        username: &str,
        password: &str,
        address: &str,
    ) -> Result<Session, ClientError> {
        typed(self.call(
            "user.login",
            to_value(&Credentials {
                username,
                password,
                address: Some(address),
            }),
        )?)
    }

    pub fn lookup(&mut self, username: &str) -> Result<Found, ClientError> {
        #[derive(Serialize)]
        struct U<'a> {
            username: &'a str,
        }
        typed(self.call("user.lookup", to_value(&U { username }))?)
    }

    pub fn set_address(
        &mut self,
        username: &str,
        token: &str,
        address: &str,
    ) -> Result<Done, ClientError> {
        typed(self.call(
            "user.set_address",
            to_value(&Authenticated {
                username,
                token,
                address: Some(address),
            }),
        )?)
    }

    /// Delete the account (password required); leaves a tombstone on the ring.
    pub fn delete(&mut self, username: &str, password: &str) -> Result<Done, ClientError> {
        typed(self.call(
            "user.delete",
            to_value(&Credentials {
                username,
                password,
                address: None,
            }),
        )?)
    }

    pub fn logout(&mut self, username: &str, token: &str) -> Result<Done, ClientError> {
        typed(self.call(
            "user.logout",
            to_value(&Authenticated {
                username,
                token,
                address: None,
            }),
        )?)
    }
}

/// Publishes a logged-in user's alive signals to its responsible gestor
/// (seed client process *send_alive*).
pub struct AliveSender {
    publisher: Box<dyn gestor_sdk::Publisher>,
    payload: Vec<u8>,
}

impl AliveSender {
    /// Signals are sealed with a session made with the responsible gestor
    /// (`session.gestor`), so nobody else can send or replay them.
    pub fn new(
        secure: &gestor_secure::SecureLayer,
        session: &Session,
    ) -> Result<AliveSender, TransportError> {
        #[derive(Serialize)]
        struct Alive<'a> {
            username: &'a str,
            token: &'a str,
        }
        let publisher = secure.publisher_via(
            &session.gestor,
            &session.signal,
            &TransportOptions::default(),
            std::time::Duration::from_secs(5),
        )?;
        let payload = to_cbor(&Alive {
            username: &session.username,
            token: &session.token,
        });
        Ok(AliveSender { publisher, payload })
    }

    /// Send one alive signal (topic `alive`).
    pub fn beat(&mut self) -> Result<(), TransportError> {
        self.publisher.publish(b"alive", &self.payload)
    }
}
