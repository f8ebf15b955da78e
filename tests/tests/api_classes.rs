//! The classes `gestor-api` declares are the ones the host records: an
//! in-process node loads the real plugins, and every kind they serve is
//! registered with its declared class.

use gestor::config::Config;
use gestor::runtime::Node;
use gestor_api::chat;
use gestor_sdk::KindClass;
use gestor_tests::cluster::{ensure_built, target_dir};
use gestor_tests::ports::free_port;

#[test]
fn plugins_register_kinds_with_their_declared_class() {
    ensure_built();
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.node.listen = format!("tcp://127.0.0.1:{}", free_port());
    config.node.signal = Some(format!("tcp://127.0.0.1:{}", free_port()));
    config.node.data_dir = dir.path().join("data");
    config.plugins.dir = Some(target_dir());
    let cluster = gestor_tests::cluster::test_cluster();
    config.security.credential = Some(cluster.admit("classes"));
    config.security.cluster_pub = Some(cluster.pub_path());
    let node = Node::start(&config).expect("node starts with the default plugins");
    let core = node.core();
    let mut checked = 0;
    for k in gestor_api::all() {
        // Served by chat clients, not by gestores.
        if chat::KINDS.contains(&k) {
            continue;
        }
        assert_eq!(core.class_of(k.name), Some(k.class), "{}", k.name);
        checked += 1;
    }
    assert!(checked > 40, "only {checked} kinds checked");
    assert_eq!(core.class_of("no.such.kind"), None);
    assert_eq!(
        core.class_of(<gestor_api::node::Status as gestor_sdk::Kind>::NAME),
        Some(KindClass::Client)
    );
    node.stop();
}
