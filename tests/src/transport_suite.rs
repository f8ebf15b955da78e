//! Transport conformance suite.
