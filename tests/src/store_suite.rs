//! Store conformance suite (see store_suite docs).
