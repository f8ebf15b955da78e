//! An example gestor plugin, built only against `gestor-sdk`.
//!
//! Build: `cargo build -p gestor-echo-plugin` (→ `target/debug/libgestor_echo_plugin.so`).
//! Run:   `gestor node --plugin gestor_echo_plugin --listen tcp://127.0.0.1:7300`
//! Call:  `gestor call echo.say --body '{"text":"hola"}' --gestor tcp://127.0.0.1:7300`
//!
//! It serves three request kinds and one status section:
//! * `echo.say {text}` → `{text, greeting, count}`: echoes with the configured greeting;
//! * `echo.boom` → panics on purpose, to show that the host turns a plugin
//!   panic into an `internal` error reply and keeps serving;
//! * `echo.remember {key, value}` / `echo.recall {key}` → persist through the
//!   host's store without knowing which backend it is;
//! * `status.echo` → appears under `sections.echo` in `gestor status`.

use gestor_sdk::{
    declare_plugin, Empty, HandlerError, Kind, KindClass, Plugin, PluginContext, PluginError,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// `[plugins.config.gestor_echo_plugin]` in the node's configuration.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct EchoConfig {
    greeting: Option<String>,
}

// ---- the request kinds this plugin serves ----------------------------------
//
// A plugin outside the gestor workspace cannot add to `gestor-api`: it
// declares its own kinds, each a zero-sized type implementing `Kind` (wire
// name, class, request and reply types), and serves them with
// `ctx.serve::<K>`. Clients send the wire names (`gestor call echo.say`).

#[derive(Serialize, Deserialize)]
pub struct Say {
    pub text: String,
}

#[derive(Serialize, Deserialize)]
pub struct Said {
    pub text: String,
    pub greeting: String,
    pub count: u64,
}

#[derive(Serialize, Deserialize)]
pub struct Remember {
    pub key: String,
    pub value: String,
}

#[derive(Serialize, Deserialize)]
pub struct Recall {
    pub key: String,
}

/// `echo.say` — client: anyone may call it.
pub struct EchoSay;
impl Kind for EchoSay {
    const NAME: &'static str = "echo.say";
    const CLASS: KindClass = KindClass::Client;
    type Request = Say;
    type Reply = Said;
}

/// `echo.boom` — client: panics on purpose.
pub struct EchoBoom;
impl Kind for EchoBoom {
    const NAME: &'static str = "echo.boom";
    const CLASS: KindClass = KindClass::Client;
    type Request = Empty;
    type Reply = ();
}

/// `echo.remember` — client.
pub struct EchoRemember;
impl Kind for EchoRemember {
    const NAME: &'static str = "echo.remember";
    const CLASS: KindClass = KindClass::Client;
    type Request = Remember;
    type Reply = bool;
}

/// `echo.recall` — client.
pub struct EchoRecall;
impl Kind for EchoRecall {
    const NAME: &'static str = "echo.recall";
    const CLASS: KindClass = KindClass::Client;
    type Request = Recall;
    type Reply = Option<String>;
}

/// `status.echo` — local: the host gathers it into `node.status`.
pub struct EchoStatus;
impl Kind for EchoStatus {
    const NAME: &'static str = "status.echo";
    const CLASS: KindClass = KindClass::Local;
    type Request = Empty;
    type Reply = BTreeMap<String, u64>;
}

#[derive(Default)]
struct Echo {
    calls: Arc<AtomicU64>,
}

const NAMESPACE: &str = "echo";

impl Plugin for Echo {
    fn start(&self, ctx: PluginContext) -> Result<(), PluginError> {
        let config: EchoConfig = ctx.config()?;
        let greeting = config.greeting.unwrap_or_else(|| "hello".to_string());

        let calls = self.calls.clone();
        ctx.serve::<EchoSay>(move |_, req| {
            let count = calls.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::info!(count, "echo.say called");
            Ok(Said {
                text: req.text,
                greeting: greeting.clone(),
                count,
            })
        })?;

        ctx.serve::<EchoBoom>(|_, _| -> Result<(), HandlerError> {
            panic!("echo.boom was asked to panic");
        })?;

        let store = ctx.store();
        ctx.serve::<EchoRemember>(move |_, req| {
            store.kv_put(NAMESPACE, req.key.as_bytes(), req.value.as_bytes())?;
            Ok(true)
        })?;
        let store = ctx.store();
        ctx.serve::<EchoRecall>(move |_, req| {
            let value = store.kv_get(NAMESPACE, req.key.as_bytes())?;
            Ok(value.map(|v| String::from_utf8_lossy(&v).into_owned()))
        })?;

        let calls = self.calls.clone();
        ctx.serve::<EchoStatus>(move |_, _| {
            Ok(BTreeMap::from([(
                "calls".to_string(),
                calls.load(Ordering::Relaxed),
            )]))
        })?;
        tracing::info!("echo plugin started");
        Ok(())
    }

    fn stop(&self) {
        tracing::info!("echo plugin stopped");
    }
}

declare_plugin!("gestor_echo_plugin", Echo::default);
