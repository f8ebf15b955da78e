use super::*;

fn peer(id: u64) -> PeerRef {
    PeerRef {
        id,
        addr: format!("tcp://127.0.0.1:{id}"),
    }
}

fn nb(me: u64, pred: Option<u64>, succ: &[u64]) -> Neighbourhood {
    Neighbourhood {
        me: peer(me),
        predecessor: pred.map(peer),
        successors: succ.iter().copied().map(peer).collect(),
    }
}

fn ts(wall_ms: u64) -> Timestamp {
    Timestamp {
        wall_ms,
        logical: 0,
        node: 1,
    }
}

fn rec(name: &str, pos: u64, wall: u64) -> UserRecord {
    UserRecord {
        username: name.into(),
        ring_pos: pos,
        address: String::new(),
        password_hash: String::new(),
        online: false,
        last_seen_ms: 0,
        version: ts(wall),
        deleted: false,
        session_hash: String::new(),
    }
}

#[test]
fn holders_are_distinct_successors_other_than_me() {
    let ids = |v: Vec<PeerRef>| v.into_iter().map(|p| p.id).collect::<Vec<_>>();
    assert_eq!(ids(holders(&nb(1, None, &[2, 3, 4, 5, 6]), 3)), [2, 3, 4]);
    assert_eq!(ids(holders(&nb(1, None, &[2, 1, 2, 3]), 3)), [2, 3]);
    assert_eq!(ids(holders(&nb(1, None, &[1]), 3)), Vec::<u64>::new());
    assert_eq!(ids(holders(&nb(1, None, &[2, 3]), 0)), Vec::<u64>::new());
}

#[test]
fn write_needs_the_first_two_holders_flushed() {
    let config = ReplicaConfig::default();
    let plan = plan_write(&nb(1, Some(9), &[2, 3, 4, 5]), &config);
    assert_eq!(plan.must, vec![peer(2), peer(3)]);
    assert_eq!(plan.rest, vec![peer(4)]);
    let mut ack = Ack::new(&plan);
    assert_eq!(ack.outcome(), AckOutcome::Pending);
    ack.confirm(4); // a background holder counts for nothing
    ack.confirm(2);
    assert_eq!(ack.outcome(), AckOutcome::Pending);
    ack.confirm(3);
    assert_eq!(ack.outcome(), AckOutcome::Acked { holders: 3 });
}

#[test]
fn a_failed_required_holder_is_a_suspect() {
    let plan = plan_write(&nb(1, Some(9), &[2, 3, 4]), &ReplicaConfig::default());
    let mut ack = Ack::new(&plan);
    ack.fail(3);
    ack.fail(3);
    assert_eq!(ack.outcome(), AckOutcome::Pending);
    ack.confirm(2);
    assert_eq!(
        ack.outcome(),
        AckOutcome::Failed {
            suspects: vec![peer(3)]
        }
    );
}

#[test]
fn small_rings_need_every_other_gestor() {
    let config = ReplicaConfig::default();
    let two = plan_write(&nb(1, Some(2), &[2, 1]), &config);
    assert_eq!((two.must.len(), two.rest.len()), (1, 0));
    let mut ack = Ack::new(&two);
    ack.confirm(2);
    assert_eq!(ack.outcome(), AckOutcome::Acked { holders: 2 });
    let alone = plan_write(&nb(1, None, &[1]), &config);
    assert_eq!(Ack::new(&alone).outcome(), AckOutcome::Acked { holders: 1 });
}

#[test]
fn sync_pushes_ours_newer_and_pulls_theirs_newer() {
    let local = vec![rec("a", 1, 5), rec("b", 2, 5), rec("c", 3, 5)];
    let theirs = vec![
        ("a".to_string(), ts(5)),
        ("b".to_string(), ts(9)),
        ("d".to_string(), ts(1)),
    ];
    let plan = plan_sync(&local, theirs);
    let pushed: Vec<&str> = plan.push.iter().map(|r| r.username.as_str()).collect();
    assert_eq!(pushed, ["c"]);
    assert_eq!(plan.pull, ["b", "d"]);
    assert!(answer_sync(local.clone(), &digest(&local)).in_sync);
    let reply = answer_sync(local[..2].to_vec(), &digest(&local));
    assert!(!reply.in_sync);
    assert_eq!(reply.versions.len(), 2);
}

#[test]
fn readiness_follows_the_merge_with_the_first_successor() {
    let mut core = ReplicaCore::new(ReplicaConfig::default());
    let ring = nb(10, Some(5), &[20, 30, 40]);
    assert!(!core.is_ready(7, Some(&ring)));
    let plan = core.begin_round(&ring).expect("a round");
    assert_eq!(plan.range, (5, 10));
    assert!(
        !core.merged(&plan, 1),
        "a later holder does not make us ready"
    );
    assert!(!core.is_ready(7, Some(&ring)));
    assert!(core.merged(&plan, 0));
    assert!(core.is_ready(7, Some(&ring)));
    assert!(!core.is_ready(11, Some(&ring)));

    let mut alone = ReplicaCore::new(ReplicaConfig::default());
    assert_eq!(alone.begin_round(&nb(10, None, &[10])), None);
    assert!(alone.is_ready(99, Some(&nb(10, None, &[10]))));
    assert!(
        !alone.is_ready(99, Some(&ring)),
        "others are back: merge first"
    );
}

#[test]
fn silent_holders_become_suspects_after_the_timeout() {
    let config = ReplicaConfig {
        heartbeat_timeout_ms: 100,
        gc_every_rounds: 2,
        ..ReplicaConfig::default()
    };
    let mut core = ReplicaCore::new(config);
    let ring = nb(10, Some(5), &[20, 30]);
    let plan = core.begin_round(&ring).unwrap();
    let first = core.end_round(&plan, vec![], 3, 1_000);
    assert!(first.suspects.is_empty());
    assert!(!first.collect_surplus);
    assert_eq!(core.stats().under_replicated, 3);
    core.heard(peer(20).addr, 1_150);
    let later = core.end_round(&plan, vec![peer(20).addr, peer(30).addr], 3, 1_200);
    assert_eq!(later.suspects, vec![peer(30)]);
    assert!(later.collect_surplus);
    assert_eq!(core.stats().under_replicated, 0);
}

#[test]
fn owners_are_heartbeaten_until_they_go_quiet() {
    let mut core = ReplicaCore::new(ReplicaConfig::default());
    let from = |a: &str| CopySource {
        addr: a.into(),
        signal: format!("{a}/sig"),
    };
    core.remember_owner(&from("me"), "me", 0);
    core.remember_owner(&from("o1"), "me", 0);
    assert_eq!(
        core.heartbeat_targets(5_000),
        vec![("o1".into(), "o1/sig".into())]
    );
    assert!(core.heartbeat_targets(60_000).is_empty());
}

#[test]
fn surplus_is_purged_only_when_every_holder_has_it() {
    let batch = vec![rec("a", 1, 5), rec("b", 2, 5)];
    let mut outside = vec![rec("a", 1, 5), rec("z", 50, 1), rec("b", 2, 5)];
    assert_eq!(take_owner_batch(&mut outside, 0, 10), batch);
    assert_eq!(outside, vec![rec("z", 50, 1)]);
    let held = |a: Option<u64>, b: Option<u64>| -> Versions {
        [("a".to_string(), a.map(ts)), ("b".to_string(), b.map(ts))]
            .into_iter()
            .collect()
    };
    let newer = newer_here(&batch, &held(Some(4), Some(5)));
    assert_eq!(newer, vec![rec("a", 1, 5)]);
    let designated = [peer(2), peer(3)];
    let all = [
        held(Some(5), Some(5)),
        held(Some(6), Some(5)),
        held(Some(5), None),
    ];
    assert_eq!(purgeable(&batch, 9, &designated, &all), ["a"]);
    assert!(
        purgeable(&batch, 9, &designated, &all[..2]).is_empty(),
        "one did not answer"
    );
    assert!(
        purgeable(&batch, 3, &designated, &all).is_empty(),
        "we are designated"
    );
}

#[test]
fn digest_is_lower_hex_sha256_independent_of_order() {
    let (a, b) = (rec("a", 1, 5), rec("b", 2, 6));
    let d = digest(&[a.clone(), b.clone()]);
    assert_eq!(d.len(), 64);
    assert!(d
        .bytes()
        .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)));
    assert_eq!(d, digest(&[b, a.clone()]));
    assert_ne!(d, digest(&[a]));
    // SHA-256 of nothing: the digest of an empty range.
    assert_eq!(
        digest(&[]),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
}

#[test]
fn arcs_cover_the_range_in_order_without_gaps() {
    use super::{arcs_for, split_arc};
    use gestor_sdk::store::in_ring_interval;
    for &(start, end) in &[(10u64, 1_000_000u64), (u64::MAX - 500, 700), (42, 42)] {
        for pieces in [1u64, 2, 3, 7, 64] {
            let arcs = split_arc(start, end, pieces);
            assert_eq!(arcs.len() as u64, pieces);
            assert_eq!(arcs.first().unwrap().0, start);
            assert_eq!(arcs.last().unwrap().1, end);
            for w in arcs.windows(2) {
                assert_eq!(w[0].1, w[1].0, "consecutive");
            }
            // Every key of the range lies in exactly one arc.
            for k in [
                start.wrapping_add(1),
                end,
                start.wrapping_add(777),
                end.wrapping_sub(3),
            ] {
                if in_ring_interval(k, start, end) {
                    let n = arcs
                        .iter()
                        .filter(|a| in_ring_interval(k, a.0, a.1))
                        .count();
                    assert_eq!(n, 1, "key {k} in ({start}, {end}], {pieces} arcs");
                }
            }
        }
    }
    assert_eq!(split_arc(5, 7, 10).len(), 2, "no empty arcs");
    assert_eq!(arcs_for(0, 1 << 40, 0).len(), 1);
    assert_eq!(arcs_for(0, 1 << 40, 4_001).len(), 3);
}
