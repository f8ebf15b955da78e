//! `gestor bench` against a real ring: every phase runs, is reported by
//! name in `--json` with its figures, and `--phases` selects them.

use gestor::config::{StorageKind, TransportKind};
use gestor_tests::cluster::{run_cli, test_cluster};
use gestor_tests::ring::{Ring, TEST_CONFIG};
use std::time::Duration;

const PHASES: [&str; 4] = ["register", "login", "set_address", "lookup"];

fn bench_phases(transport: TransportKind, storage: StorageKind) {
    let ring = Ring::start(3, transport, storage);
    ring.wait_stable(Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("ring did not form: {e}"));
    let t = transport.to_string();
    let urls = ring.urls();
    let bench = |extra: &[&str]| {
        let mut args = vec![
            "bench",
            "--json",
            "--threads",
            "2",
            "--duration-secs",
            "1",
            "--users",
            "20",
            "--transport",
            &t,
        ];
        for u in &urls {
            args.extend(["--gestor", u.as_str()]);
        }
        args.extend(extra);
        run_cli(&args, &[("RUST_LOG", "off")])
    };

    let (code, out, err) = bench(&[]);
    assert_eq!(code, 0, "bench failed: {err}");
    let report: serde_json::Value = serde_json::from_str(&out).expect("--json prints JSON");
    let phases = report["phases"].as_object().expect("phases by name");
    let mut names: Vec<&str> = phases.keys().map(String::as_str).collect();
    names.sort();
    let mut want = PHASES.to_vec();
    want.sort();
    assert_eq!(names, want, "{out}");
    for name in PHASES {
        let p = &phases[name];
        assert!(
            p["ops"].as_u64().unwrap_or(0) > 0,
            "{name} did nothing: {p}"
        );
        assert_eq!(p["errors"].as_u64(), Some(0), "{name} had errors: {p}");
        for field in ["per_second", "p50_ms", "p99_ms", "max_ms", "mean_hops"] {
            assert!(p[field].as_f64().is_some(), "{name}.{field} missing: {p}");
        }
    }
    // register and login go through every user once.
    assert_eq!(phases["register"]["ops"].as_u64(), Some(20));
    assert_eq!(phases["login"]["ops"].as_u64(), Some(20));
    assert_eq!(report["gestores"].as_array().map(Vec::len), Some(3));
    // The floor: a round trip to `gestor bench-echo`, another process.
    let floor = report["channel"]["process_p50_ms"].as_f64();
    assert!(floor.is_some_and(|ms| ms > 0.0), "{}", report["channel"]);

    // The users exist now: lookups alone.
    let (code, out, err) = bench(&["--phases", "lookup"]);
    assert_eq!(code, 0, "bench --phases lookup failed: {err}");
    let report: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let names: Vec<&String> = report["phases"].as_object().unwrap().keys().collect();
    assert_eq!(names, ["lookup"], "{out}");

    // set_address without login logs in first, untimed.
    let (code, out, err) = bench(&["--phases", "set_address"]);
    assert_eq!(code, 0, "bench --phases set_address failed: {err}");
    let report: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let names: Vec<&String> = report["phases"].as_object().unwrap().keys().collect();
    assert_eq!(names, ["set_address"], "{out}");

    // --preload fills the ring through dir.import first (operator credential).
    let cred = test_cluster().admit("bench-operator").display().to_string();
    let (code, out, err) = bench(&[
        "--phases",
        "lookup",
        "--preload",
        "300",
        "--credential",
        &cred,
    ]);
    assert_eq!(code, 0, "bench --preload failed: {err}");
    let report: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(
        report["phases"]["preload"]["ops"].as_u64(),
        Some(300),
        "{out}"
    );
    assert_eq!(
        report["phases"]["preload"]["errors"].as_u64(),
        Some(0),
        "{out}"
    );
    let (code, _out, err) = bench(&["--preload", "10"]);
    assert_ne!(code, 0, "--preload without a credential must fail");
    assert!(err.contains("--credential"), "{err}");

    let (code, _out, err) = bench(&["--phases", "nonsense"]);
    assert_ne!(code, 0);
    assert!(err.contains("nonsense"), "{err}");
}

/// Users whose registration was refused are not looked up, in this run or
/// a later one without a register phase: with 3 password
/// attempts per client address per minute on each of 3 gestores, at most 9
/// of 16 users register, and the lookup phase asks only for those, so it
/// counts no error of the register phase's making (it counted a `not_found`
/// for every lookup of the others).
fn lookups_skip_unregistered_users(transport: TransportKind, storage: StorageKind) {
    let limit = "password_attempts_per_source_per_minute = 0";
    assert!(TEST_CONFIG.contains(limit));
    let config = TEST_CONFIG.replace(limit, "password_attempts_per_source_per_minute = 3");
    let ring = Ring::start_with_config(3, transport, storage, &config);
    ring.wait_stable(Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("ring did not form: {e}"));
    let t = transport.to_string();
    let mut args = vec![
        "bench",
        "--json",
        "--threads",
        "4",
        "--duration-secs",
        "1",
        "--users",
        "16",
        "--prefix",
        "limited-",
        "--phases",
        "register,lookup",
        "--transport",
        &t,
    ];
    let urls = ring.urls();
    for u in &urls {
        args.extend(["--gestor", u.as_str()]);
    }
    let (code, out, err) = run_cli(&args, &[("RUST_LOG", "off")]);
    assert_eq!(code, 0, "bench failed: {err}");
    let report: serde_json::Value = serde_json::from_str(&out).expect("--json prints JSON");
    let (register, lookup) = (&report["phases"]["register"], &report["phases"]["lookup"]);
    // A refused registration is shed load (`busy`), retried, then given up.
    let registered = register["ops"].as_u64().unwrap_or(0);
    assert!(
        (1..=9).contains(&registered) && register["busy"].as_u64().unwrap_or(0) > 0,
        "the limit should let 1 to 9 of 16 users register: {register}"
    );
    assert!(lookup["ops"].as_u64().unwrap_or(0) > 0, "{lookup}");
    assert_eq!(lookup["errors"].as_u64(), Some(0), "{lookup}");
    let absent = 16 - registered;
    assert_eq!(report["absent_users"].as_u64(), Some(absent), "{out}");

    // A later run without the register phase finds the same users absent
    // (an untimed lookup of each) and leaves them out too.
    let at = args.iter().position(|a| *a == "register,lookup").unwrap();
    args[at] = "lookup";
    let (code, out, err) = run_cli(&args, &[("RUST_LOG", "off")]);
    assert_eq!(code, 0, "bench --phases lookup failed: {err}");
    let report: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(report["absent_users"].as_u64(), Some(absent), "{out}");
    let lookup = &report["phases"]["lookup"];
    assert!(lookup["ops"].as_u64().unwrap_or(0) > 0, "{lookup}");
    assert_eq!(lookup["errors"].as_u64(), Some(0), "{lookup}");
}

/// `--compare-insecure` starts a secure and an `--insecure` ring of its own,
/// each registers every user and both are measured. It failed for a while
/// with "the ring did not stabilize" (its evenly spaced ids and virtual
/// nodes made two positions with one id) and no test ran it.
#[test]
fn compare_insecure_runs_both_rings() {
    let args = [
        "bench",
        "--compare-insecure",
        "--json",
        "--transport",
        "nng",
        "--nodes",
        "3",
        "--threads",
        "2",
        "--users",
        "10",
        "--duration-secs",
        "2",
        "--rounds",
        "2",
    ];
    let (code, out, err) = run_cli(&args, &[("RUST_LOG", "off")]);
    assert_eq!(code, 0, "bench --compare-insecure failed: {err}");
    let report: serde_json::Value = serde_json::from_str(&out).expect("--json prints JSON");
    for name in ["register_secure", "register_insecure", "secure", "insecure"] {
        let p = &report[name];
        assert!(
            p["ops"].as_u64().unwrap_or(0) > 0,
            "{name} did nothing: {p}"
        );
        assert_eq!(p["errors"].as_u64(), Some(0), "{name} had errors: {p}");
    }
    assert!(
        report["p50_ratio"].as_f64().is_some_and(|r| r > 0.0),
        "{out}"
    );
}

gestor_tests::matrix!(bench_phases);
gestor_tests::half_matrix!(straight => lookups_skip_unregistered_users);
