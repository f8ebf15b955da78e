//! Zave's ring invariants, checked over snapshots of the live nodes.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::ops::Bound;

use serde::{Deserialize, Serialize};

use crate::{distance, Id};

/// A node's ring pointers, as reported by a live node (e.g. built from
/// `gestor status --json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct View {
    pub id: Id,
    pub predecessor: Option<Id>,
    pub successors: Vec<Id>,
}

/// A broken invariant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Violation {
    /// Two views share an id.
    DuplicateNode { id: Id },
    /// ConnectedAppendages: no live node in the successor list.
    NoLiveSuccessor { node: Id },
    /// AtLeastOneRing: following first live successors never cycles.
    NoRing,
    /// AtMostOneRing: the first-live-successor graph has several cycles.
    MultipleRings { rings: usize },
    /// OrderedRing: the first live successor is not the next live id.
    WrongSuccessor { node: Id, expected: Id, found: Id },
    /// OrderedSuccessorLists: not in ring order after the owner, or with
    /// duplicates.
    UnorderedSuccessors { node: Id, successors: Vec<Id> },
    /// A node lists itself while others are alive (only `[me]` when alone).
    SelfInSuccessors { node: Id },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::DuplicateNode { id } => write!(f, "duplicate node id {id:#018x}"),
            Violation::NoLiveSuccessor { node } => {
                write!(f, "{node:#018x} has no live node in its successor list")
            }
            Violation::NoRing => write!(f, "no ring: successor pointers never cycle"),
            Violation::MultipleRings { rings } => write!(f, "{rings} disjoint rings"),
            Violation::WrongSuccessor {
                node,
                expected,
                found,
            } => write!(
                f,
                "{node:#018x}: first live successor is {found:#018x}, expected {expected:#018x}"
            ),
            Violation::UnorderedSuccessors { node, successors } => {
                write!(f, "{node:#018x}: successor list out of ring order: [")?;
                for (i, s) in successors.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{s:#018x}")?;
                }
                write!(f, "]")
            }
            Violation::SelfInSuccessors { node } => {
                write!(
                    f,
                    "{node:#018x} lists itself as a successor but is not alone"
                )
            }
        }
    }
}

impl std::error::Error for Violation {}

/// Check Zave's invariants over the views of all *live* nodes; ids that do
/// not appear among the views are dead. The empty set is trivially fine.
pub fn check_invariants(views: &[View]) -> Result<(), Vec<Violation>> {
    let mut violations = Vec::new();
    let mut live: BTreeSet<Id> = BTreeSet::new();
    for v in views {
        if !live.insert(v.id) {
            violations.push(Violation::DuplicateNode { id: v.id });
        }
    }
    if live.is_empty() {
        return Ok(());
    }
    let mut edges: HashMap<Id, Id> = HashMap::new();
    for v in views {
        check_successor_list(v, &mut violations);
        // OrderedRing: the first live successor is the next live id.
        match v.successors.iter().find(|s| live.contains(s)) {
            None => violations.push(Violation::NoLiveSuccessor { node: v.id }),
            Some(&first) => {
                edges.insert(v.id, first);
                let expected = next_live(&live, v.id);
                if first != expected {
                    violations.push(Violation::WrongSuccessor {
                        node: v.id,
                        expected,
                        found: first,
                    });
                }
            }
        }
    }
    match count_rings(&live, &edges) {
        0 => violations.push(Violation::NoRing),
        1 => {}
        n => violations.push(Violation::MultipleRings { rings: n }),
    }
    if violations.is_empty() {
        Ok(())
    } else {
        Err(violations)
    }
}

/// OrderedSuccessorLists, and no self-listing unless alone.
fn check_successor_list(v: &View, violations: &mut Vec<Violation>) {
    if v.successors == [v.id] {
        return;
    }
    if v.successors.contains(&v.id) {
        violations.push(Violation::SelfInSuccessors { node: v.id });
    }
    let mut last = 0u64;
    let ordered = v.successors.iter().all(|s| {
        let d = distance(v.id, *s);
        let ok = d > last || (d == 0 && *s == v.id);
        last = last.max(d);
        ok
    });
    if !ordered {
        violations.push(Violation::UnorderedSuccessors {
            node: v.id,
            successors: v.successors.clone(),
        });
    }
}

/// The next live id after `id`, wrapping.
fn next_live(live: &BTreeSet<Id>, id: Id) -> Id {
    live.range((Bound::Excluded(id), Bound::Unbounded))
        .next()
        .or(live.first())
        .copied()
        .unwrap_or_default()
}

/// Cycles in the functional graph node -> first live successor.
fn count_rings(live: &BTreeSet<Id>, edges: &HashMap<Id, Id>) -> usize {
    let mut color: HashMap<Id, u8> = HashMap::new(); // 1 = on current path, 2 = done
    let mut rings = 0usize;
    for &start in live {
        let mut path = Vec::new();
        let mut cur = Some(start);
        while let Some(id) = cur {
            match color.get(&id).copied() {
                Some(2) => break,
                Some(_) => {
                    rings += 1; // met our own path: a new cycle
                    break;
                }
                None => {
                    color.insert(id, 1);
                    path.push(id);
                    cur = edges.get(&id).copied();
                }
            }
        }
        for id in path {
            color.insert(id, 2);
        }
    }
    rings
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(id: Id, succ: &[Id]) -> View {
        View {
            id,
            predecessor: None,
            successors: succ.to_vec(),
        }
    }

    #[test]
    fn healthy_ring_passes() {
        let views = [v(10, &[20, 30]), v(20, &[30, 10]), v(30, &[10, 20])];
        assert_eq!(check_invariants(&views), Ok(()));
        assert_eq!(check_invariants(&[v(5, &[5])]), Ok(()));
        assert_eq!(check_invariants(&[]), Ok(()));
    }

    #[test]
    fn wrap_around_ring_passes() {
        let m = u64::MAX;
        let views = [v(m, &[0, 1]), v(0, &[1, m]), v(1, &[m, 0])];
        assert_eq!(check_invariants(&views), Ok(()));
    }

    #[test]
    fn dead_entries_are_skipped() {
        // 20 is dead: 10 -> 30 is fine as the first live successor.
        let views = [v(10, &[20, 30]), v(30, &[10])];
        assert_eq!(check_invariants(&views), Ok(()));
    }

    #[test]
    fn detects_each_violation() {
        let e = check_invariants(&[v(10, &[30]), v(20, &[10]), v(30, &[10])]).unwrap_err();
        assert!(e.contains(&Violation::WrongSuccessor {
            node: 10,
            expected: 20,
            found: 30
        }));

        let e = check_invariants(&[v(10, &[99]), v(20, &[10])]).unwrap_err();
        assert!(e.contains(&Violation::NoLiveSuccessor { node: 10 }));
        assert!(e.contains(&Violation::NoRing));

        let e = check_invariants(&[v(10, &[10]), v(20, &[20])]).unwrap_err();
        assert!(e.contains(&Violation::MultipleRings { rings: 2 }));

        let e = check_invariants(&[v(10, &[20, 30]), v(20, &[10]), v(30, &[10, 20])]);
        assert!(e.is_err());
        let e = check_invariants(&[v(10, &[30, 20]), v(20, &[30]), v(30, &[10])]).unwrap_err();
        assert!(e
            .iter()
            .any(|x| matches!(x, Violation::UnorderedSuccessors { node: 10, .. })));

        let e = check_invariants(&[v(10, &[20, 10]), v(20, &[10])]).unwrap_err();
        assert!(e.contains(&Violation::SelfInSuccessors { node: 10 }));

        let e = check_invariants(&[v(10, &[20]), v(10, &[20]), v(20, &[10])]).unwrap_err();
        assert!(e.contains(&Violation::DuplicateNode { id: 10 }));
        assert!(!e[0].to_string().is_empty());
    }
}
