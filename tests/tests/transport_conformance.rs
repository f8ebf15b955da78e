//! The transport conformance suite, run once per backend. Test names carry
//! the backend: `nng::reqrep_round_trip`, `zmq::reqrep_round_trip`, ...

gestor_tests::transport_suite!(nng, gestor_transport_nng::NngTransport::new());
gestor_tests::transport_suite!(zmq, gestor_transport_zmq::ZmqTransport::new());
