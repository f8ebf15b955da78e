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

/// One gestor's only range (no virtual nodes).
fn one(nb: Neighbourhood) -> VirtualNodes {
    VirtualNodes { nodes: vec![nb] }
}

/// Virtual node `id` of the gestor numbered `gestor` (its URL).
fn at(id: u64, gestor: u64) -> PeerRef {
    PeerRef {
        id,
        addr: format!("tcp://127.0.0.1:{gestor}"),
    }
}

fn vnode(me: PeerRef, pred: Option<PeerRef>, successors: &[PeerRef]) -> Neighbourhood {
    Neighbourhood {
        me,
        predecessor: pred,
        successors: successors.to_vec(),
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
    let h = |n: Neighbourhood, copies| ids(holders(&one(n.clone()), &n, copies));
    assert_eq!(h(nb(1, None, &[2, 3, 4, 5, 6]), 3), [2, 3, 4]);
    assert_eq!(h(nb(1, None, &[2, 1, 2, 3]), 3), [2, 3]);
    assert_eq!(h(nb(1, None, &[1]), 3), Vec::<u64>::new());
    assert_eq!(h(nb(1, None, &[2, 3]), 0), Vec::<u64>::new());
}

#[test]
fn holders_are_distinct_gestores_not_virtual_nodes() {
    // Gestor 1 has virtual nodes 10 and 30; gestor 2 has 20 and 25.
    let ours = VirtualNodes {
        nodes: vec![
            vnode(
                at(10, 1),
                Some(at(5, 4)),
                &[at(20, 2), at(25, 2), at(30, 1), at(40, 3)],
            ),
            vnode(
                at(30, 1),
                Some(at(25, 2)),
                &[at(40, 3), at(50, 4), at(60, 5)],
            ),
        ],
    };
    let addrs = |v: Vec<PeerRef>| v.into_iter().map(|p| p.addr).collect::<Vec<_>>();
    // From 10: gestor 2 once, never gestor 1 (its own disk), then 3; the
    // list ends, so it carries on from our own virtual node 30's list.
    assert_eq!(
        addrs(holders(&ours, &ours.nodes[0], 3)),
        [at(0, 2).addr, at(0, 3).addr, at(0, 4).addr]
    );
    assert_eq!(
        addrs(holders(&ours, &ours.nodes[0], 2)),
        [at(0, 2).addr, at(0, 3).addr]
    );
    // Without our other range to carry on from: what the list gives.
    let alone = one(ours.nodes[0].clone());
    assert_eq!(holders(&alone, &alone.nodes[0], 3).len(), 2);
    // A lone gestor with several virtual nodes copies nowhere.
    let lone = VirtualNodes {
        nodes: vec![
            vnode(at(10, 1), Some(at(30, 1)), &[at(30, 1)]),
            vnode(at(30, 1), Some(at(10, 1)), &[at(10, 1)]),
        ],
    };
    assert!(alone_ok(&lone));
    assert!(holders(&lone, &lone.nodes[0], 3).is_empty());
    assert!(!alone_ok(&ours));
}

#[test]
fn carrying_on_never_loses_what_a_later_list_found() {
    // Gestor 1 at 10, 20, 40, 50; gestor 3 at 70 only; gestor 2 elsewhere.
    let (g1, g2) = (|id| at(id, 1), |id| at(id, 2));
    let ours = VirtualNodes {
        nodes: vec![
            vnode(
                g1(10),
                Some(g2(5)),
                &[g1(20), g2(30), g2(35), g1(40), g1(50)],
            ),
            vnode(
                g1(20),
                Some(g1(10)),
                &[g2(30), g2(35), g1(40), g1(50), g2(60)],
            ),
            vnode(
                g1(40),
                Some(g2(35)),
                &[g1(50), g2(60), at(70, 3), g2(80), g2(85)],
            ),
            vnode(
                g1(50),
                Some(g1(40)),
                &[g2(60), at(70, 3), g2(80), g2(85), g2(88)],
            ),
        ],
    };
    let addrs = |v: Vec<PeerRef>| v.into_iter().map(|p| p.addr).collect::<Vec<_>>();
    // Carried on from 50, which finds gestor 3; going back to carry on
    // from 40 or 20 (shorter reach) must not cut it off again.
    assert_eq!(
        addrs(holders(&ours, &ours.nodes[0], 3)),
        [at(0, 2).addr, at(0, 3).addr]
    );
}

fn alone_ok(ours: &VirtualNodes) -> bool {
    super::alone(ours)
}

#[test]
fn writes_are_grouped_by_the_holders_of_their_range() {
    let config = ReplicaConfig::default();
    let ours = VirtualNodes {
        nodes: vec![
            vnode(
                at(100, 1),
                Some(at(50, 2)),
                &[at(200, 2), at(300, 3), at(400, 4)],
            ),
            vnode(
                at(500, 1),
                Some(at(400, 4)),
                &[at(600, 5), at(700, 2), at(800, 3)],
            ),
            // Same holders as the first range: one group.
            vnode(
                at(900, 1),
                Some(at(850, 4)),
                &[at(950, 2), at(960, 3), at(970, 4)],
            ),
        ],
    };
    let records = vec![
        rec("a", 60, 1),
        rec("b", 450, 1),
        rec("c", 870, 1),
        rec("d", 150, 1),
    ];
    let (groups, unowned) = plan_writes(&ours, records, &config);
    assert_eq!(unowned, vec![rec("d", 150, 1)], "in no range of ours");
    assert_eq!(groups.len(), 2);
    let names = |g: &WriteGroup| {
        g.records
            .iter()
            .map(|r| r.username.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&groups[0]), ["a", "c"]);
    assert_eq!(groups[0].plan.must, vec![at(200, 2), at(300, 3)]);
    assert_eq!(names(&groups[1]), ["b"]);
    assert_eq!(groups[1].plan.must, vec![at(600, 5), at(700, 2)]);
    assert_eq!(groups[1].plan.rest, vec![at(800, 3)]);
    // A lone gestor whose predecessor is not known owns every key.
    let lone = one(vnode(at(7, 1), None, &[at(7, 1)]));
    let (groups, unowned) = plan_writes(&lone, vec![rec("a", 60, 1)], &config);
    assert!(unowned.is_empty());
    assert_eq!(
        Ack::new(&groups[0].plan).outcome(),
        AckOutcome::Acked { holders: 1 }
    );
}

#[test]
fn a_holder_is_its_url_whichever_virtual_node_named_it() {
    let plan = WritePlan {
        must: vec![at(20, 2), at(30, 3)],
        rest: vec![],
    };
    let mut ack = Ack::new(&plan);
    ack.confirm(&at(999, 2).addr);
    ack.fail(&at(31, 3).addr);
    assert_eq!(
        ack.outcome(),
        AckOutcome::Failed {
            suspects: vec![at(30, 3)]
        }
    );
}

#[test]
fn write_needs_the_first_two_holders_flushed() {
    let config = ReplicaConfig::default();
    let ring = nb(1, Some(9), &[2, 3, 4, 5]);
    let plan = plan_write(&one(ring.clone()), &ring, &config);
    assert_eq!(plan.must, vec![peer(2), peer(3)]);
    assert_eq!(plan.rest, vec![peer(4)]);
    let mut ack = Ack::new(&plan);
    assert_eq!(ack.outcome(), AckOutcome::Pending);
    ack.confirm(&peer(4).addr); // a background holder counts for nothing
    ack.confirm(&peer(2).addr);
    assert_eq!(ack.outcome(), AckOutcome::Pending);
    ack.confirm(&peer(3).addr);
    assert_eq!(ack.outcome(), AckOutcome::Acked { holders: 3 });
}

#[test]
fn a_failed_required_holder_is_a_suspect() {
    let ring = nb(1, Some(9), &[2, 3, 4]);
    let plan = plan_write(&one(ring.clone()), &ring, &ReplicaConfig::default());
    let mut ack = Ack::new(&plan);
    ack.fail(&peer(3).addr);
    ack.fail(&peer(3).addr);
    assert_eq!(ack.outcome(), AckOutcome::Pending);
    ack.confirm(&peer(2).addr);
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
    let ring = nb(1, Some(2), &[2, 1]);
    let two = plan_write(&one(ring.clone()), &ring, &config);
    assert_eq!((two.must.len(), two.rest.len()), (1, 0));
    let mut ack = Ack::new(&two);
    ack.confirm(&peer(2).addr);
    assert_eq!(ack.outcome(), AckOutcome::Acked { holders: 2 });
    let ring = nb(1, None, &[1]);
    let alone = plan_write(&one(ring.clone()), &ring, &config);
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
    let ring = one(nb(10, Some(5), &[20, 30, 40]));
    assert!(!core.is_ready(7, Some(&ring)));
    let plans = core.begin_round(&ring);
    assert_eq!(plans.len(), 1);
    let plan = &plans[0];
    assert_eq!((plan.vnode, plan.range), (10, (5, 10)));
    assert!(
        !core.merged(plan, 1),
        "a later holder does not make us ready"
    );
    assert!(!core.is_ready(7, Some(&ring)));
    assert_eq!(core.ranges_ready(&ring), 0);
    assert!(core.merged(plan, 0));
    assert!(core.is_ready(7, Some(&ring)));
    assert!(!core.is_ready(11, Some(&ring)));
    assert_eq!(core.ranges_ready(&ring), 1);
    // The predecessor died: the range grew, not ready until merged again.
    let grown = one(nb(10, Some(2), &[20, 30, 40]));
    assert!(!core.is_ready(4, Some(&grown)));
    assert!(core.is_ready(7, Some(&grown)));
    assert_eq!(core.ranges_ready(&grown), 0);
    // A gestor joined at 7: the range shrank, still merged.
    assert_eq!(core.ranges_ready(&one(nb(10, Some(7), &[20]))), 1);

    let mut alone = ReplicaCore::new(ReplicaConfig::default());
    let lone = one(nb(10, None, &[10]));
    assert!(alone.begin_round(&lone).is_empty());
    assert!(alone.is_ready(99, Some(&lone)));
    assert_eq!(alone.ranges_ready(&lone), 1);
    assert!(
        !alone.is_ready(99, Some(&ring)),
        "others are back: merge first"
    );
    assert_eq!(alone.ranges_ready(&ring), 0);
}

/// Gestor 1 at 100 and 500, each position with its own holders.
fn two_positions() -> VirtualNodes {
    VirtualNodes {
        nodes: vec![
            vnode(at(100, 1), Some(at(50, 2)), &[at(200, 2), at(300, 3)]),
            vnode(at(500, 1), Some(at(400, 3)), &[at(600, 2), at(700, 3)]),
        ],
    }
}

#[test]
fn readiness_is_per_virtual_node() {
    let mut core = ReplicaCore::new(ReplicaConfig::default());
    let ours = two_positions();
    let plans = core.begin_round(&ours);
    assert_eq!(
        plans.iter().map(|p| p.vnode).collect::<Vec<_>>(),
        [100, 500]
    );
    assert!(core.merged(&plans[1], 0));
    assert!(core.is_ready(450, Some(&ours)));
    assert!(
        !core.is_ready(60, Some(&ours)),
        "the other range is not merged"
    );
    assert_eq!(core.ranges_ready(&ours), 1);
    assert_eq!(core.ready_range(100), None);
    assert!(core.merged(&plans[0], 0));
    assert_eq!(core.ranges_ready(&ours), 2);
    assert_eq!(core.ready_range(100), Some((50, 100)));
    // Alone with several virtual nodes: every range ready with no merge,
    // until another gestor shows up.
    let mut lone = ReplicaCore::new(ReplicaConfig::default());
    let ring = VirtualNodes {
        nodes: vec![
            vnode(at(100, 1), Some(at(500, 1)), &[at(500, 1)]),
            vnode(at(500, 1), Some(at(100, 1)), &[at(100, 1)]),
        ],
    };
    let plans = lone.begin_round(&ring);
    assert!(plans.iter().all(|p| p.holders.is_empty()));
    assert_eq!(lone.ranges_ready(&ring), 2);
    assert!(lone.is_ready(300, Some(&ring)) && lone.is_ready(50, Some(&ring)));
    assert!(
        !lone.is_ready(450, Some(&ours)),
        "merged alone; others are back"
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
    let ring = one(nb(10, Some(5), &[20, 30]));
    let plans = core.begin_round(&ring);
    let done = |confirmed: Vec<String>| {
        vec![RangeDone {
            confirmed,
            primary: 3,
        }]
    };
    let first = core.end_round(&plans, &done(vec![]), 1_000);
    assert!(first.suspects.is_empty());
    assert!(!first.collect_surplus);
    assert_eq!(core.stats().under_replicated, 3);
    core.heard(peer(20).addr, 1_150);
    let later = core.end_round(&plans, &done(vec![peer(20).addr, peer(30).addr]), 1_200);
    assert_eq!(later.suspects, vec![peer(30)]);
    assert!(later.collect_surplus);
    assert_eq!(core.stats().under_replicated, 0);
}

#[test]
fn round_figures_add_up_over_the_ranges() {
    let mut core = ReplicaCore::new(ReplicaConfig::default());
    let ours = two_positions();
    let plans = core.begin_round(&ours);
    let done = [
        RangeDone {
            confirmed: vec![at(0, 2).addr, at(0, 3).addr],
            primary: 4,
        },
        RangeDone {
            confirmed: vec![at(0, 2).addr],
            primary: 6,
        },
    ];
    let end = core.end_round(&plans, &done, 1_000);
    let s = core.stats();
    assert_eq!((s.primary_records, s.under_replicated), (10, 6));
    assert_eq!(s.confirmed_holders, [at(0, 2).addr, at(0, 3).addr]);
    assert_eq!(s.wanted_holders, 3);
    assert!(end.suspects.is_empty());
    // The watch knows each holder once, by URL: silence makes one suspect
    // per gestor, not one per range.
    let later = core.end_round(&plans, &done, 1_000 + 60_000);
    assert_eq!(later.suspects.len(), 2);
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
    let me = peer(9).addr;
    assert_eq!(purgeable(&batch, &me, &designated, &all), ["a"]);
    assert!(
        purgeable(&batch, &me, &designated, &all[..2]).is_empty(),
        "one did not answer"
    );
    assert!(
        purgeable(&batch, &peer(3).addr, &designated, &all).is_empty(),
        "we are designated"
    );
    // Designated through another of our virtual nodes: still us.
    assert!(purgeable(&batch, &at(0, 3).addr, &designated, &all).is_empty());
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
