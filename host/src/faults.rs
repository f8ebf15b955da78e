//! A fault-injecting wrapper over any transport, for partition tests.
//!
//! With `transport.fault_file` set, a node reads that file (re-read whenever
//! it changes) as a list of URLs, one per line, it must not reach: requests
//! to them fail at once with a timeout error and signals to them are
//! dropped, as if the network between here and there were cut. Both sides
//! of a partition list each other, so nothing crosses in either direction.
//! The real backend underneath is untouched; this only decides what to send.

use gestor_sdk::transport::{
    Endpoint, Publisher, Replier, RequestHandler, Requester, Subscriber, Transport,
    TransportOptions,
};
use gestor_sdk::TransportError;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

pub struct FaultRules {
    path: PathBuf,
    cache: Mutex<(Option<SystemTime>, Vec<String>)>,
}

impl FaultRules {
    pub fn new(path: PathBuf) -> Self {
        FaultRules {
            path,
            cache: Mutex::new((None, Vec::new())),
        }
    }

    pub fn blocked(&self, url: &str) -> bool {
        let modified = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.0 != modified {
            let text = std::fs::read_to_string(&self.path).unwrap_or_default();
            *cache = (
                modified,
                text.lines()
                    .map(|l| l.trim().to_string())
                    .filter(|l| !l.is_empty())
                    .collect(),
            );
        }
        cache.1.iter().any(|b| b == url)
    }
}

pub struct FaultyTransport {
    inner: Arc<dyn Transport>,
    rules: Arc<FaultRules>,
}

impl FaultyTransport {
    pub fn new(inner: Arc<dyn Transport>, rules: FaultRules) -> Self {
        FaultyTransport {
            inner,
            rules: Arc::new(rules),
        }
    }
}

struct FaultyRequester {
    inner: Box<dyn Requester>,
    rules: Arc<FaultRules>,
}

impl Requester for FaultyRequester {
    fn request(&mut self, payload: &[u8], timeout: Duration) -> Result<Vec<u8>, TransportError> {
        if self.rules.blocked(self.inner.url()) {
            // A cut link looks like silence; don't make callers wait for it.
            std::thread::sleep(timeout.min(Duration::from_millis(50)));
            return Err(TransportError::Timeout {
                url: self.inner.url().to_string(),
                timeout_ms: timeout.as_millis() as u64,
            });
        }
        self.inner.request(payload, timeout)
    }
    fn url(&self) -> &str {
        self.inner.url()
    }
}

struct FaultyPublisher {
    inner: Box<dyn Publisher>,
    url: Option<String>,
    rules: Arc<FaultRules>,
}

impl Publisher for FaultyPublisher {
    fn publish(&mut self, topic: &[u8], payload: &[u8]) -> Result<(), TransportError> {
        if self.url.as_deref().is_some_and(|u| self.rules.blocked(u)) {
            return Ok(());
        }
        self.inner.publish(topic, payload)
    }
}

impl Transport for FaultyTransport {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn replier(
        &self,
        url: &str,
        handler: Arc<dyn RequestHandler>,
        options: &TransportOptions,
    ) -> Result<Box<dyn Replier>, TransportError> {
        self.inner.replier(url, handler, options)
    }
    fn requester(
        &self,
        url: &str,
        options: &TransportOptions,
    ) -> Result<Box<dyn Requester>, TransportError> {
        Ok(Box::new(FaultyRequester {
            inner: self.inner.requester(url, options)?,
            rules: self.rules.clone(),
        }))
    }
    fn publisher(
        &self,
        endpoint: &Endpoint,
        options: &TransportOptions,
    ) -> Result<Box<dyn Publisher>, TransportError> {
        let url = match endpoint {
            Endpoint::Dial(u) => Some(u.clone()),
            Endpoint::Bind(_) => None,
        };
        Ok(Box::new(FaultyPublisher {
            inner: self.inner.publisher(endpoint, options)?,
            url,
            rules: self.rules.clone(),
        }))
    }
    fn subscriber(
        &self,
        endpoint: &Endpoint,
        prefixes: &[&[u8]],
        options: &TransportOptions,
    ) -> Result<Box<dyn Subscriber>, TransportError> {
        self.inner.subscriber(endpoint, prefixes, options)
    }
}
