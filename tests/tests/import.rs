//! `gestor import` against a real ring, on every backend combination:
//! 10,000 accounts from a JSON-lines file, routed to their owners and
//! copied like normal writes; the imported password works at login; an
//! existing account is left alone; a second run changes nothing; a bad file
//! is refused whole, by line number, with nothing sent.

use argon2::password_hash::{PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use gestor::config::{StorageKind, TransportKind};
use gestor_client::client::Client;
use gestor_tests::cluster::{client_layer, run_cli, test_cluster};
use gestor_tests::ring::Ring;
use std::io::Write;
use std::time::Duration;

const ACCOUNTS: usize = 10_000;
const COPIES: usize = 3;

fn hash(password: &str) -> String {
    let params = Params::new(64, 1, 1, None).expect("params");
    let salt = SaltString::encode_b64(b"gestor-import-test").expect("salt");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password(password.as_bytes(), &salt)
        .expect("hash")
        .to_string()
}

fn import_ten_thousand(transport: TransportKind, storage: StorageKind) {
    let ring = Ring::start(4, transport, storage);
    ring.wait_stable(Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("ring did not form: {e}"));
    let url = ring.urls()[1].clone();
    let client = || {
        Client::new(
            client_layer(transport),
            vec![url.clone()],
            Duration::from_secs(10),
        )
    };
    // An account that exists before the import keeps its own password.
    client()
        .register("imp00007", "own-password")
        .expect("register");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("accounts.jsonl");
    let imported_hash = hash("imported-pw");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&file).unwrap());
    for i in 0..ACCOUNTS {
        let address = if i % 10 == 0 {
            format!(r#","address":"127.0.0.1:{}""#, 20_000 + i)
        } else {
            String::new()
        };
        writeln!(
            out,
            r#"{{"username":"imp{i:05}","password_hash":"{imported_hash}"{address}}}"#
        )
        .unwrap();
    }
    drop(out);

    let credential = test_cluster().admit("importer");
    let t = transport.to_string();
    let cred = credential.display().to_string();
    let path = file.display().to_string();
    let import = |path: &str| {
        run_cli(
            &[
                "import",
                path,
                "--json",
                "--credential",
                &cred,
                "--gestor",
                &url,
                "--transport",
                &t,
            ],
            &[("RUST_LOG", "off")],
        )
    };
    let (code, stdout, stderr) = import(&path);
    assert_eq!(code, 0, "import failed: {stderr}\n{stdout}");
    let summary: serde_json::Value = serde_json::from_str(&stdout).expect("JSON summary");
    assert_eq!(
        summary["imported"].as_u64(),
        Some(ACCOUNTS as u64 - 1),
        "{stdout}"
    );
    assert_eq!(summary["existing"].as_u64(), Some(1), "{stdout}");

    // Every record on its 4 gestores (plus the one registered).
    ring.wait_copies(COPIES, ACCOUNTS, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("copies after import: {e}"));
    let mut c = client();
    for i in (0..ACCOUNTS).step_by(397) {
        let found = c
            .lookup(&format!("imp{i:05}"))
            .expect("imported user found");
        if i % 10 == 0 {
            assert_eq!(found.address, format!("127.0.0.1:{}", 20_000 + i));
        }
    }
    c.login("imp00042", "imported-pw", "127.0.0.1:9042")
        .expect("the imported hash verifies the password");
    c.login("imp00007", "own-password", "127.0.0.1:9007")
        .expect("the existing account kept its password");

    // Again: nothing new, nothing refused.
    let (code, stdout, stderr) = import(&path);
    assert_eq!(code, 0, "second import failed: {stderr}");
    let again: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(again["imported"].as_u64(), Some(0), "{stdout}");
    assert_eq!(
        again["existing"].as_u64(),
        Some(ACCOUNTS as u64),
        "{stdout}"
    );

    // A bad line refuses the whole file before anything is sent.
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        format!(
            "{{\"username\":\"fresh1\",\"password_hash\":\"{imported_hash}\"}}\n{{\"username\":\"fresh2\",\"password_hash\":\"plain\"}}\n"
        ),
    )
    .unwrap();
    let (code, _out, err) = import(&bad.display().to_string());
    assert_ne!(code, 0);
    assert!(err.contains("line 2"), "{err}");
    assert!(
        client().lookup("fresh1").is_err(),
        "nothing of a bad file is imported"
    );
}

gestor_tests::matrix!(import_ten_thousand);
