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

use gestor_sdk::{declare_plugin, HandlerError, Plugin, PluginContext, PluginError};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// `[plugins.config.gestor_echo_plugin]` in the node's configuration.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct EchoConfig {
    greeting: Option<String>,
}

#[derive(Deserialize)]
struct Say {
    text: String,
}

#[derive(Serialize)]
struct Said {
    text: String,
    greeting: String,
    count: u64,
}

#[derive(Deserialize)]
struct Remember {
    key: String,
    value: String,
}

#[derive(Deserialize)]
struct Recall {
    key: String,
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
        ctx.on("echo.say", move |req: Say| {
            let count = calls.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::info!(count, "echo.say called");
            Ok(Said {
                text: req.text,
                greeting: greeting.clone(),
                count,
            })
        })?;

        ctx.on(
            "echo.boom",
            |_: serde::de::IgnoredAny| -> Result<(), HandlerError> {
                panic!("echo.boom was asked to panic");
            },
        )?;

        let store = ctx.store();
        ctx.on("echo.remember", move |req: Remember| {
            store.kv_put(NAMESPACE, req.key.as_bytes(), req.value.as_bytes())?;
            Ok(true)
        })?;
        let store = ctx.store();
        ctx.on("echo.recall", move |req: Recall| {
            let value = store.kv_get(NAMESPACE, req.key.as_bytes())?;
            Ok(value.map(|v| String::from_utf8_lossy(&v).into_owned()))
        })?;

        let calls = self.calls.clone();
        ctx.on("status.echo", move |_: serde::de::IgnoredAny| {
            Ok(std::collections::BTreeMap::from([(
                "calls",
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
