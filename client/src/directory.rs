//! Typed client side of the directory protocol (docs/PROTOCOL.md, `user.*`).

use crate::client::{Client, ClientError};
use gestor_api::topics;
use gestor_api::user::{self, Alive, Authenticated, Credentials, UserOnly};
pub use gestor_api::user::{Done, Found, Registered};
use gestor_sdk::transport::TransportOptions;
use gestor_sdk::wire::to_cbor;
use gestor_sdk::TransportError;

/// A logged-in user's session, as `user.login` answers it (saved by the CLI).
pub type Session = gestor_api::user::LoggedIn;

impl Client {
    pub fn register(&mut self, username: &str, password: &str) -> Result<Registered, ClientError> {
        self.request_for::<user::Register>(
            username,
            &Credentials {
                username: username.into(),
                password: password.into(),
                address: None,
            },
        )
    }

    pub fn login(
        &mut self,
        username: &str,
        password: &str,
        address: &str,
    ) -> Result<Session, ClientError> {
        self.request_for::<user::Login>(
            username,
            &Credentials {
                username: username.into(),
                password: password.into(),
                address: Some(address.into()),
            },
        )
    }

    pub fn lookup(&mut self, username: &str) -> Result<Found, ClientError> {
        self.request_for::<user::Lookup>(
            username,
            &UserOnly {
                username: username.into(),
            },
        )
    }

    pub fn set_address(
        &mut self,
        username: &str,
        token: &str,
        address: &str,
    ) -> Result<Done, ClientError> {
        self.request_for::<user::SetAddress>(
            username,
            &Authenticated {
                username: username.into(),
                token: token.into(),
                address: Some(address.into()),
            },
        )
    }

    /// Delete the account (password required); leaves a tombstone on the ring.
    pub fn delete(&mut self, username: &str, password: &str) -> Result<Done, ClientError> {
        self.request_for::<user::Delete>(
            username,
            &Credentials {
                username: username.into(),
                password: password.into(),
                address: None,
            },
        )
    }

    pub fn logout(&mut self, username: &str, token: &str) -> Result<Done, ClientError> {
        self.request_for::<user::Logout>(
            username,
            &Authenticated {
                username: username.into(),
                token: token.into(),
                address: None,
            },
        )
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
        let publisher = secure.publisher_via(
            &session.gestor,
            &session.signal,
            &TransportOptions::default(),
            std::time::Duration::from_secs(5),
        )?;
        let payload = to_cbor(&Alive {
            username: session.username.clone(),
            token: session.token.clone(),
        });
        Ok(AliveSender { publisher, payload })
    }

    /// Send one alive signal (topic `alive`).
    pub fn beat(&mut self) -> Result<(), TransportError> {
        self.publisher
            .publish(topics::ALIVE.as_bytes(), &self.payload)
    }
}
