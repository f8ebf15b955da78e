//! The plugin contract: what a plugin exports, what it gets from the host.
//!
//! A plugin is a `cdylib` that calls [`declare_plugin!`](crate::declare_plugin)
//! once. That exports one symbol, `GESTOR_PLUGIN`, a `#[repr(C)]`
//! [`PluginDeclaration`] whose first field is an [`AbiFingerprint`]. The host
//! reads and compares the fingerprint — plain C data, safe to read whatever
//! compiler built the library — before it touches anything else.
//!
//! Panics: a Rust panic cannot be caught by another copy of the standard
//! library (each cdylib links its own), so every entry into plugin code is
//! wrapped here, in SDK code compiled *into the plugin*: handler closures,
//! loops, `start`, `stop` and the exported functions. A panic becomes an
//! [`ErrorCode::Internal`] reply or a logged error, never an abort.

use crate::error::{CallError, ErrorCode, HandlerError, PluginError};
use crate::hlc::Clock;
use crate::kind::{Kind, KindClass};
use crate::store::Store;
use crate::wire::{from_value, to_value};
use ciborium::Value;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::ffi::{c_char, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

/// First field of every declaration; changes whenever the declaration
/// layout, or a trait or type that crosses the boundary (`Host`, `Plugin`,
/// `RequestMeta`, the error types), does — here for the `upkeep` of
/// `Host::register_request`.
pub const ABI_MAGIC: u64 = 0x6765_7374_6f72_0007;

/// Compiler, SDK and build facts that must match between host and plugin.
#[repr(C)]
pub struct AbiFingerprint {
    pub magic: u64,
    pub rustc: *const c_char,
    pub sdk_version: *const c_char,
    pub target: *const c_char,
    pub profile: *const c_char,
    /// Versions of the crates whose types cross the boundary.
    pub deps: *const c_char,
}

const RUSTC: &str = concat!(env!("GESTOR_ABI_RUSTC"), "\0");
const SDK: &str = concat!(env!("CARGO_PKG_VERSION"), "\0");
const TARGET: &str = concat!(env!("GESTOR_ABI_TARGET"), "\0");
const PROFILE: &str = concat!(env!("GESTOR_ABI_PROFILE"), "\0");
// Pinned with `=` in this crate's Cargo.toml, so these are the versions compiled in.
const DEPS: &str = "ciborium=0.2.2 tracing-core=0.1.36\0";

impl AbiFingerprint {
    /// The fingerprint of whatever is being compiled against this SDK.
    pub const CURRENT: AbiFingerprint = AbiFingerprint {
        magic: ABI_MAGIC,
        rustc: RUSTC.as_ptr() as *const c_char,
        sdk_version: SDK.as_ptr() as *const c_char,
        target: TARGET.as_ptr() as *const c_char,
        profile: PROFILE.as_ptr() as *const c_char,
        deps: DEPS.as_ptr() as *const c_char,
    };

    /// Human-readable form, for error messages.
    ///
    /// # Safety
    /// The pointers must be null or point to NUL-terminated strings, which
    /// holds for any declaration whose `magic` equals [`ABI_MAGIC`].
    pub unsafe fn describe(&self) -> String {
        let s = |p: *const c_char| {
            if p.is_null() {
                "?".to_string()
            } else {
                CStr::from_ptr(p).to_string_lossy().into_owned()
            }
        };
        format!(
            "sdk {} / {} / {} / {} / {}",
            s(self.sdk_version),
            s(self.rustc),
            s(self.target),
            s(self.profile),
            s(self.deps)
        )
    }
}

/// What `GESTOR_PLUGIN` points at.
#[repr(C)]
pub struct PluginDeclaration {
    pub fingerprint: AbiFingerprint,
    /// NUL-terminated plugin name.
    pub name: *const c_char,
    /// Returns `Box<Box<dyn Plugin>>` as a raw pointer, or null if construction panicked.
    pub create: unsafe extern "C" fn() -> *mut c_void,
    /// Install a forwarder to the host's `tracing::Dispatch` (passed as
    /// `*const Dispatch`), with the host's maximum level (0 = off … 5 = trace).
    pub install_logging: unsafe extern "C" fn(dispatch: *const c_void, max_level: u8),
}

// Only immutable pointers to string literals and functions.
unsafe impl Sync for PluginDeclaration {}

/// A gestor service. `start` registers handlers and loops through the
/// context and returns; the host then runs them. `stop` is called once at
/// shutdown, after which no handler of this plugin is called again.
pub trait Plugin: Send + Sync {
    fn start(&self, ctx: PluginContext) -> Result<(), PluginError>;
    fn stop(&self) {
        // Most plugins own nothing that outlives the host's loops.
    }
}

/// Facts about the request being handled.
#[derive(Debug, Clone)]
pub struct RequestMeta {
    pub kind: String,
    /// The class the handler was registered with.
    pub class: KindClass,
    /// The network address (IP) of the client that sent the request, when
    /// it came straight from a client and the transport knows it; `None`
    /// for requests from gestores and from this node.
    pub source: Option<String>,
    /// The static key the sender proved in its secure session (an admitted
    /// gestor's credential key, or a client's key of the moment); `None`
    /// for this node's own calls and on an insecure node, where nobody
    /// proves anything. Compare with [`Host::gestor_key`].
    pub caller_key: Option<[u8; 32]>,
}

pub type RequestFn = Arc<dyn Fn(&RequestMeta, &Value) -> Result<Value, HandlerError> + Send + Sync>;
pub type SignalFn = Arc<dyn Fn(&str, &Value) + Send + Sync>;
pub type LoopFn = Arc<dyn Fn() + Send + Sync>;

/// Services the host offers to plugins. Implemented by the host; plugins use
/// it through [`PluginContext`], which adds panic guards and typed helpers.
pub trait Host: Send + Sync {
    /// This node's id (hash of its advertised address unless configured).
    fn node_id(&self) -> u64;
    /// URL other gestores and clients send requests to.
    fn request_url(&self) -> String;
    /// URL of this node's bound signal subscriber (PUB-SUB; publishers dial it).
    fn signal_url(&self) -> String;
    /// The request URLs of gestores given to join through (may be empty: first node).
    fn join_urls(&self) -> Vec<String>;
    fn store(&self) -> Arc<dyn Store>;
    fn clock(&self) -> Arc<Clock>;
    /// Milliseconds of physical time, from the node's clock: plugins read
    /// "now" only here, so a host with a simulated clock simulates them.
    fn now_ms(&self) -> u64 {
        self.clock().wall_ms()
    }
    /// The `[plugins.config.NAME]` table of the configuration, as CBOR.
    fn plugin_config(&self, plugin: &str) -> Value;
    /// Serve request `kind`; `class` says who may send it (the host keeps
    /// it beside the handler), `fast_path` whether to try it on the
    /// transport's I/O thread first ([`Kind::FAST_PATH`]), `upkeep`
    /// whether it may run on the workers reserved for gestores
    /// ([`Kind::UPKEEP`]).
    fn register_request(
        &self,
        plugin: &str,
        kind: &str,
        class: KindClass,
        fast_path: bool,
        upkeep: bool,
        handler: RequestFn,
    ) -> Result<(), PluginError>;
    fn register_signal(
        &self,
        plugin: &str,
        topic_prefix: &str,
        handler: SignalFn,
    ) -> Result<(), PluginError>;
    fn spawn_loop(&self, plugin: &str, name: &str, every: Duration, body: LoopFn);
    /// Send a request to the gestor at `url` and wait for its reply.
    fn request(
        &self,
        url: &str,
        kind: &str,
        body: Value,
        timeout: Duration,
    ) -> Result<Value, CallError>;
    /// Send a request to a *client* endpoint at `url` (e.g. a chat client's
    /// receiver): sealed like every frame, but the peer need not be an
    /// admitted gestor, so send nothing there that only gestores may see.
    fn request_client(
        &self,
        url: &str,
        kind: &str,
        body: Value,
        timeout: Duration,
    ) -> Result<Value, CallError>;
    /// Dispatch a request to a handler of this node without the network.
    fn call_local(&self, kind: &str, body: Value) -> Result<Value, CallError>;
    /// The key the admitted gestor at `url` proved in a session this node
    /// made with it (handshaking now if there is none): which gestor is
    /// *there*, as this node sees it. `Ok(None)` on an insecure node.
    fn gestor_key(&self, url: &str, timeout: Duration) -> Result<Option<[u8; 32]>, CallError>;
    /// Publish a signal to the signal endpoint at `url`; never blocks, may be lost.
    fn signal(&self, url: &str, topic: &str, body: Value) -> Result<(), CallError>;
    /// The initial-gestors list attached to every reply.
    fn initial_gestors(&self) -> Vec<String>;
    fn set_initial_gestors(&self, list: Vec<String>);
    /// True once shutdown has begun; loops should return promptly.
    fn stopping(&self) -> bool;
    /// False while a fast-path request runs on the transport's I/O thread
    /// ([`Kind::FAST_PATH`]), where nothing may wait; asking there also
    /// sends the request to a worker, to run again from the start.
    fn can_wait(&self) -> bool {
        true
    }
}

/// The handle a plugin receives in [`Plugin::start`].
#[derive(Clone)]
pub struct PluginContext {
    host: Arc<dyn Host>,
    plugin: String,
}

/// The text of a caught panic's payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

impl PluginContext {
    /// Made by the host for each plugin.
    pub fn new(host: Arc<dyn Host>, plugin: impl Into<String>) -> Self {
        PluginContext {
            host,
            plugin: plugin.into(),
        }
    }

    pub fn plugin_name(&self) -> &str {
        &self.plugin
    }

    pub fn host(&self) -> &Arc<dyn Host> {
        &self.host
    }

    pub fn node_id(&self) -> u64 {
        self.host.node_id()
    }
    pub fn request_url(&self) -> String {
        self.host.request_url()
    }
    pub fn signal_url(&self) -> String {
        self.host.signal_url()
    }
    pub fn join_urls(&self) -> Vec<String> {
        self.host.join_urls()
    }
    pub fn store(&self) -> Arc<dyn Store> {
        self.host.store()
    }
    pub fn clock(&self) -> Arc<Clock> {
        self.host.clock()
    }
    /// See [`Host::now_ms`].
    pub fn now_ms(&self) -> u64 {
        self.host.now_ms()
    }
    pub fn stopping(&self) -> bool {
        self.host.stopping()
    }
    pub fn initial_gestors(&self) -> Vec<String> {
        self.host.initial_gestors()
    }
    /// See [`Host::gestor_key`].
    pub fn gestor_key(&self, url: &str, timeout: Duration) -> Result<Option<[u8; 32]>, CallError> {
        self.host.gestor_key(url, timeout)
    }
    pub fn set_initial_gestors(&self, list: Vec<String>) {
        self.host.set_initial_gestors(list)
    }

    /// This plugin's configuration table deserialized into `T` (defaults when absent).
    pub fn config<T: DeserializeOwned + Default>(&self) -> Result<T, PluginError> {
        let v = self.host.plugin_config(&self.plugin);
        if v.is_null() {
            return Ok(T::default());
        }
        let message = |e: ciborium::value::Error| match e {
            ciborium::value::Error::Custom(message) => message,
        };
        v.deserialized().map_err(|e| {
            // Name the setting: the first key refused even on its own.
            let key = v.as_map().and_then(|entries| {
                entries.iter().find_map(|(k, x)| {
                    let alone = Value::Map(vec![(k.clone(), x.clone())]);
                    let e = alone.deserialized::<T>().err()?;
                    Some(format!(".{}: {}", k.as_text().unwrap_or("?"), message(e)))
                })
            });
            PluginError::Start {
                plugin: self.plugin.clone(),
                reason: format!(
                    "invalid configuration plugins.config.{}{}",
                    self.plugin,
                    key.unwrap_or_else(|| format!(": {}", message(e)))
                ),
            }
        })
    }

    /// Serve the typed kind `K` with `handler`: the body is read into
    /// `K::Request` (a `bad_request` reply if it does not fit) and the reply
    /// written from `K::Reply`. A panic in `handler` becomes an `internal`
    /// error reply.
    pub fn serve<K: Kind>(
        &self,
        handler: impl Fn(&RequestMeta, K::Request) -> Result<K::Reply, HandlerError>
            + Send
            + Sync
            + 'static,
    ) -> Result<(), PluginError> {
        self.register(
            K::NAME,
            K::CLASS,
            (K::FAST_PATH, K::UPKEEP),
            move |meta, body| {
                let req: K::Request = from_value(body)?;
                handler(meta, req).map(|rep| to_value(&rep))
            },
        )
    }

    /// Serve request `kind` of class `class` with an untyped `handler`, for
    /// kinds only known at run time; prefer [`serve`](Self::serve). A panic
    /// in `handler` becomes an `internal` error reply.
    pub fn on_request<F>(&self, kind: &str, class: KindClass, handler: F) -> Result<(), PluginError>
    where
        F: Fn(&RequestMeta, &Value) -> Result<Value, HandlerError> + Send + Sync + 'static,
    {
        self.register(kind, class, (false, false), handler)
    }

    /// `lanes`: ([`Kind::FAST_PATH`], [`Kind::UPKEEP`]).
    fn register<F>(
        &self,
        kind: &str,
        class: KindClass,
        (fast_path, upkeep): (bool, bool),
        handler: F,
    ) -> Result<(), PluginError>
    where
        F: Fn(&RequestMeta, &Value) -> Result<Value, HandlerError> + Send + Sync + 'static,
    {
        let plugin = self.plugin.clone();
        let guarded: RequestFn = Arc::new(
            move |meta: &RequestMeta, body: &Value| match catch_unwind(AssertUnwindSafe(|| {
                handler(meta, body)
            })) {
                Ok(result) => result,
                Err(payload) => {
                    let message = panic_message(payload.as_ref());
                    tracing::error!(plugin = %plugin, kind = %meta.kind, "handler panicked: {message}");
                    Err(HandlerError::new(
                        ErrorCode::Internal,
                        format!("plugin {plugin} panicked handling {}: {message}", meta.kind),
                    ))
                }
            },
        );
        self.host
            .register_request(&self.plugin, kind, class, fast_path, upkeep, guarded)
    }

    /// Handle signals whose topic starts with `topic_prefix`.
    pub fn on_signal<F>(&self, topic_prefix: &str, handler: F) -> Result<(), PluginError>
    where
        F: Fn(&str, &Value) + Send + Sync + 'static,
    {
        let plugin = self.plugin.clone();
        let guarded: SignalFn = Arc::new(move |topic: &str, body: &Value| {
            if let Err(payload) = catch_unwind(AssertUnwindSafe(|| handler(topic, body))) {
                tracing::error!(plugin = %plugin, topic, "signal handler panicked: {}", panic_message(payload.as_ref()));
            }
        });
        self.host
            .register_signal(&self.plugin, topic_prefix, guarded)
    }

    /// Run `body` every `every` on a host thread until shutdown.
    pub fn every<F>(&self, name: &str, every: Duration, body: F)
    where
        F: Fn() + Send + Sync + 'static,
    {
        let plugin = self.plugin.clone();
        let loop_name = name.to_string();
        let guarded: LoopFn = Arc::new(move || {
            if let Err(payload) = catch_unwind(AssertUnwindSafe(&body)) {
                tracing::error!(plugin = %plugin, task = %loop_name, "loop panicked: {}", panic_message(payload.as_ref()));
            }
        });
        self.host.spawn_loop(&self.plugin, name, every, guarded)
    }

    /// Send `K` to the gestor at `url` and wait for its reply.
    pub fn call<K: Kind>(
        &self,
        url: &str,
        body: &K::Request,
        timeout: Duration,
    ) -> Result<K::Reply, CallError> {
        let v = self.host.request(url, K::NAME, to_value(body), timeout)?;
        v.deserialized()
            .map_err(|e| CallError::MalformedReply(e.to_string()))
    }

    /// Typed request `K` to a client endpoint (see [`Host::request_client`]).
    pub fn call_client<K: Kind>(
        &self,
        url: &str,
        body: &K::Request,
        timeout: Duration,
    ) -> Result<K::Reply, CallError> {
        let v = self
            .host
            .request_client(url, K::NAME, to_value(body), timeout)?;
        v.deserialized()
            .map_err(|e| CallError::MalformedReply(e.to_string()))
    }

    /// Whether this handler may wait (sleep, retry, call another gestor).
    /// False on the transport's I/O thread ([`Kind::FAST_PATH`]): return at
    /// once, with any error; a worker then runs the request again.
    pub fn can_wait(&self) -> bool {
        self.host.can_wait()
    }

    /// Dispatch `K` to its handler on this node, without the network.
    pub fn call_local<K: Kind>(&self, body: &K::Request) -> Result<K::Reply, CallError> {
        let v = self.host.call_local(K::NAME, to_value(body))?;
        v.deserialized()
            .map_err(|e| CallError::MalformedReply(e.to_string()))
    }

    /// Publish `body` under `topic` to the signal endpoint at `url`.
    pub fn signal<T: Serialize>(&self, url: &str, topic: &str, body: &T) -> Result<(), CallError> {
        self.host.signal(url, topic, to_value(body))
    }
}

/// Wraps a plugin so that `start` and `stop` cannot unwind into the host.
struct Guarded {
    name: &'static str,
    inner: Box<dyn Plugin>,
}

impl Plugin for Guarded {
    fn start(&self, ctx: PluginContext) -> Result<(), PluginError> {
        catch_unwind(AssertUnwindSafe(|| self.inner.start(ctx))).unwrap_or_else(|payload| {
            Err(PluginError::Panicked {
                plugin: self.name.to_string(),
                message: panic_message(payload.as_ref()),
            })
        })
    }
    fn stop(&self) {
        if let Err(payload) = catch_unwind(AssertUnwindSafe(|| self.inner.stop())) {
            tracing::error!(
                plugin = self.name,
                "stop panicked: {}",
                panic_message(payload.as_ref())
            );
        }
    }
}

#[doc(hidden)]
pub fn __create_guarded<P: Plugin + 'static>(name: &'static str, make: fn() -> P) -> *mut c_void {
    match catch_unwind(make) {
        Ok(plugin) => {
            let boxed: Box<dyn Plugin> = Box::new(Guarded {
                name,
                inner: Box::new(plugin),
            });
            Box::into_raw(Box::new(boxed)) as *mut c_void
        }
        Err(_) => std::ptr::null_mut(),
    }
}

/// Declare this cdylib a gestor plugin: `declare_plugin!("name", MyPlugin::new);`
/// where the second argument is a `fn() -> impl Plugin`.
#[macro_export]
macro_rules! declare_plugin {
    ($name:literal, $make:expr) => {
        #[no_mangle]
        pub static GESTOR_PLUGIN: $crate::plugin::PluginDeclaration =
            $crate::plugin::PluginDeclaration {
                fingerprint: $crate::plugin::AbiFingerprint::CURRENT,
                name: concat!($name, "\0").as_ptr() as *const ::std::ffi::c_char,
                create: __gestor_plugin_create,
                install_logging: $crate::logging::__install_forwarder,
            };

        unsafe extern "C" fn __gestor_plugin_create() -> *mut ::std::ffi::c_void {
            $crate::plugin::__create_guarded($name, $make)
        }
    };
}
