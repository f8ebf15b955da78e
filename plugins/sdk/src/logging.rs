//! Forwarding `tracing` from a plugin to the host.
//!
//! A cdylib carries its own copy of `tracing-core` with its own global
//! dispatcher, which starts empty: without help, a plugin's events go
//! nowhere. The host hands each plugin its `Dispatch`; the plugin installs a
//! [`Forwarder`] as its global default, which passes every call on. Setting
//! the host's dispatch directly is not enough: the plugin's level filter
//! would stay OFF, because it is computed from `max_level_hint`, which the
//! forwarder reports on the host's behalf.

use std::ffi::c_void;
use tracing_core::span::{Attributes, Current, Id, Record};
use tracing_core::subscriber::{Interest, Subscriber};
use tracing_core::{Dispatch, Event, LevelFilter, Metadata};

/// Passes every subscriber call on to the host's dispatch.
pub struct Forwarder {
    host: Dispatch,
    max_level: LevelFilter,
}

impl Forwarder {
    pub fn new(host: Dispatch, max_level: LevelFilter) -> Self {
        Forwarder { host, max_level }
    }
}

impl Subscriber for Forwarder {
    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        self.host.register_callsite(metadata)
    }
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.host.enabled(metadata)
    }
    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(self.max_level)
    }
    fn new_span(&self, span: &Attributes<'_>) -> Id {
        self.host.new_span(span)
    }
    fn record(&self, span: &Id, values: &Record<'_>) {
        self.host.record(span, values)
    }
    fn record_follows_from(&self, span: &Id, follows: &Id) {
        self.host.record_follows_from(span, follows)
    }
    fn event(&self, event: &Event<'_>) {
        self.host.event(event)
    }
    fn enter(&self, span: &Id) {
        self.host.enter(span)
    }
    fn exit(&self, span: &Id) {
        self.host.exit(span)
    }
    fn clone_span(&self, id: &Id) -> Id {
        self.host.clone_span(id)
    }
    fn try_close(&self, id: Id) -> bool {
        self.host.try_close(id)
    }
    fn current_span(&self) -> Current {
        self.host.current_span()
    }
}

/// Level encoding used across the boundary: 0 = off, 1 = error … 5 = trace.
pub fn level_to_u8(level: LevelFilter) -> u8 {
    match level {
        LevelFilter::OFF => 0,
        LevelFilter::ERROR => 1,
        LevelFilter::WARN => 2,
        LevelFilter::INFO => 3,
        LevelFilter::DEBUG => 4,
        _ => 5,
    }
}

pub fn level_from_u8(level: u8) -> LevelFilter {
    match level {
        0 => LevelFilter::OFF,
        1 => LevelFilter::ERROR,
        2 => LevelFilter::WARN,
        3 => LevelFilter::INFO,
        4 => LevelFilter::DEBUG,
        _ => LevelFilter::TRACE,
    }
}

/// Exported through the plugin declaration; runs inside the plugin.
///
/// # Safety
/// `dispatch` must point to a live `tracing_core::Dispatch` of the same
/// version (guaranteed once the ABI fingerprint matched).
#[doc(hidden)]
pub unsafe extern "C" fn __install_forwarder(dispatch: *const c_void, max_level: u8) {
    if dispatch.is_null() {
        return;
    }
    let host = (*(dispatch as *const Dispatch)).clone();
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let forwarder = Dispatch::new(Forwarder::new(host, level_from_u8(max_level)));
        // Fails only if already installed (the host loads a library once).
        let _ = tracing_core::dispatcher::set_global_default(forwarder);
        tracing_core::callsite::rebuild_interest_cache();
    }));
}
