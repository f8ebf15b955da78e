//! Hashing slots shared by the gestores of one machine.
//!
//! Each gestor sizes its hashing pool to the machine, so several gestores on
//! one machine run several pools' worth of argon2 hashes at once, and
//! interleaved beyond the core count each hash is slower (their memory no
//! longer stays in the caches). With `machine_hash_slots_dir` set, the
//! gestores naming that directory share `count` lock files in it and each
//! hash holds one (`flock` across processes, a flag within one), so they run
//! at most `count` hashes at once between them. A lock is released when its
//! holder closes the file or dies, so a gestor that crashes mid-hash leaks
//! no slot.
//!
//! Anyone who can open the files can hold a slot, so the directory must be
//! private to the gestores' user: it is created 0700, and one that anyone
//! else may use, or that belongs to another user, is refused. Waiting for a
//! slot is bounded by the job's own deadline. It is not a queue: a thread
//! that lets a slot go may take it again at once for its next job, so a
//! gestor flooded with password checks can keep most of the slots. (A pause
//! after a contended hash, to give the others turns, cost about as much
//! throughput as sharing gains: the slot stood free until a sleeping poller
//! woke.)

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Most slots a directory may hold: more than any machine has cores.
pub const MAX_MACHINE_SLOTS: usize = 1024;

/// How long a waiting hash sleeps between tries; flock has no timed wait.
const POLL: Duration = Duration::from_millis(1);

/// The slots of one directory, as one gestor sees them: one open file per
/// slot for the whole process (flock conflicts between open files, not
/// threads), and a flag per slot for its threads.
pub struct MachineSlots {
    dir: PathBuf,
    slots: Vec<Slot>,
    /// Spreads first tries over the slots.
    next: AtomicUsize,
    /// Hashes that held a slot.
    taken: AtomicU64,
    /// Jobs whose deadline passed while every slot was held (`busy`).
    missed: AtomicU64,
    /// Hashes run without a slot because its lock failed.
    without: AtomicU64,
}

struct Slot {
    file: File,
    /// Held by one of this process's threads.
    held_here: AtomicBool,
}

/// What taking a slot came to.
pub enum Taken<'a> {
    /// Held until dropped.
    Held(Held<'a>),
    /// Every slot stayed held until the deadline.
    Missed,
    /// The lock failed: hash without (counted, logged).
    Unusable,
}

/// A held slot; let go when dropped.
pub struct Held<'a> {
    slot: &'a Slot,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let _ = self.slot.file.unlock();
        self.slot.held_here.store(false, Ordering::Release);
    }
}

impl MachineSlots {
    /// `count` slots (1 to [`MAX_MACHINE_SLOTS`]) in `dir`, which must be
    /// absolute; the directory is created 0700 if missing (its parent must
    /// exist), and refused when it is a symlink, belongs to another user or
    /// lets anyone else in.
    pub fn new(dir: PathBuf, count: usize) -> Result<Self, String> {
        if !dir.is_absolute() {
            return Err("not an absolute path".into());
        }
        if !(1..=MAX_MACHINE_SLOTS).contains(&count) {
            return Err(format!("{count} slots is not 1 to {MAX_MACHINE_SLOTS}"));
        }
        if let Err(e) = std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            if e.kind() != std::io::ErrorKind::AlreadyExists {
                return Err(e.to_string());
            }
        }
        check_private(&dir)?;
        let slots = (0..count)
            .map(|slot| {
                let path = dir.join(format!("slot-{slot}"));
                OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&path)
                    .map(|file| Slot {
                        file,
                        held_here: AtomicBool::new(false),
                    })
                    .map_err(|e| format!("slot file {}: {e}", path.display()))
            })
            .collect::<Result<_, _>>()?;
        Ok(MachineSlots {
            dir,
            slots,
            next: AtomicUsize::new(std::process::id() as usize),
            taken: AtomicU64::new(0),
            missed: AtomicU64::new(0),
            without: AtomicU64::new(0),
        })
    }

    /// (taken, missed, without), for status.
    pub fn counts(&self) -> (u64, u64, u64) {
        (
            self.taken.load(Ordering::Relaxed),
            self.missed.load(Ordering::Relaxed),
            self.without.load(Ordering::Relaxed),
        )
    }

    pub fn count(&self) -> usize {
        self.slots.len()
    }

    /// Count a hash run without a slot, and say why: at the 1st, 2nd, 4th,
    /// 8th… such hash, so a broken directory is seen but cannot flood the log.
    fn ran_without(&self, why: &std::io::Error) {
        let n = self.without.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_power_of_two() {
            tracing::warn!(dir = %self.dir.display(), without = n, "hashing without a machine slot: {why}");
        }
    }

    /// A slot, held, polling every [`POLL`] until `until`.
    pub fn take(&self, until: Instant) -> Taken<'_> {
        let count = self.slots.len();
        let first = self.next.fetch_add(1, Ordering::Relaxed);
        loop {
            for k in 0..count {
                let slot = &self.slots[(first + k) % count];
                if slot
                    .held_here
                    .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                    .is_err()
                {
                    continue;
                }
                match slot.file.try_lock() {
                    Ok(()) => {
                        self.taken.fetch_add(1, Ordering::Relaxed);
                        return Taken::Held(Held { slot });
                    }
                    Err(std::fs::TryLockError::WouldBlock) => {
                        slot.held_here.store(false, Ordering::Release);
                    }
                    Err(std::fs::TryLockError::Error(e)) => {
                        slot.held_here.store(false, Ordering::Release);
                        self.ran_without(&e);
                        return Taken::Unusable;
                    }
                }
            }
            if Instant::now() >= until {
                self.missed.fetch_add(1, Ordering::Relaxed);
                return Taken::Missed;
            }
            std::thread::sleep(POLL);
        }
    }
}

/// The directory is ours alone: a real directory (not a symlink), owned by
/// this process's user, with no access for anyone else.
fn check_private(dir: &Path) -> Result<(), String> {
    let meta = std::fs::symlink_metadata(dir).map_err(|e| e.to_string())?;
    if !meta.file_type().is_dir() {
        return Err("not a directory (or a symlink)".into());
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return Err(format!("owned by uid {}, not this user ({me})", meta.uid()));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(format!(
            "others may use it (mode {:o}); chmod go-rwx",
            meta.mode() & 0o777
        ));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Arc;

    /// A fresh absolute path for one test's slot directory (not created).
    pub(crate) fn slot_dir(test: &str) -> PathBuf {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        std::env::temp_dir().join(format!(
            "gestor-slots-{test}-{}-{nanos}",
            std::process::id()
        ))
    }

    fn held(t: Taken<'_>) -> Held<'_> {
        match t {
            Taken::Held(h) => h,
            Taken::Missed => panic!("missed"),
            Taken::Unusable => panic!("unusable"),
        }
    }

    #[test]
    fn slots_are_shared_between_gestores_and_freed_when_let_go() {
        let dir = slot_dir("shared");
        // Two instances stand for two gestores: each opens its own files,
        // and flock conflicts between open files, whatever process holds them.
        let one = Arc::new(MachineSlots::new(dir.clone(), 2).unwrap());
        let two = Arc::new(MachineSlots::new(dir.clone(), 2).unwrap());
        let now = Instant::now();
        let first = held(one.take(now));
        let second = held(two.take(now));
        assert!(
            matches!(one.take(now), Taken::Missed),
            "both slots are held"
        );
        assert!(
            matches!(two.take(now), Taken::Missed),
            "both slots are held"
        );
        drop(first);
        let third = held(one.take(now));
        // A waiter polls until a holder lets go, within its deadline.
        let (got_tx, got_rx) = std::sync::mpsc::channel();
        let waiter = {
            let one = one.clone();
            std::thread::spawn(move || {
                let taken = matches!(
                    one.take(Instant::now() + Duration::from_secs(10)),
                    Taken::Held(_)
                );
                got_tx.send(taken).unwrap();
            })
        };
        assert!(
            got_rx.recv_timeout(Duration::from_millis(100)).is_err(),
            "took a slot while both were held"
        );
        drop(second);
        assert_eq!(got_rx.recv_timeout(Duration::from_secs(10)), Ok(true));
        waiter.join().unwrap();
        drop(third);
        assert_eq!(one.counts(), (3, 1, 0));
        assert_eq!(two.counts(), (1, 1, 0));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn threads_of_one_gestor_do_not_share_a_slot() {
        let dir = slot_dir("threads");
        let slots = Arc::new(MachineSlots::new(dir.clone(), 1).unwrap());
        let now = Instant::now();
        // The process holds the flock already; the flag keeps a second
        // thread of it out.
        let first = held(slots.take(now));
        let other = {
            let slots = slots.clone();
            std::thread::spawn(move || matches!(slots.take(Instant::now()), Taken::Missed))
        };
        assert!(other.join().unwrap(), "a second thread took the held slot");
        drop(first);
        assert!(matches!(slots.take(now), Taken::Held(_)));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_directory_others_may_use_is_refused() {
        let dir = slot_dir("open");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o750))
            .unwrap();
        let e = MachineSlots::new(dir.clone(), 2).err().expect("refused");
        assert!(e.contains("others may use it"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);

        let link = slot_dir("link");
        std::os::unix::fs::symlink(std::env::temp_dir(), &link).unwrap();
        let e = MachineSlots::new(link.clone(), 2).err().expect("refused");
        assert!(e.contains("symlink"), "{e}");
        let _ = std::fs::remove_file(&link);

        let e = MachineSlots::new("relative/slots".into(), 2)
            .err()
            .expect("refused");
        assert!(e.contains("absolute"), "{e}");
        let e = MachineSlots::new(slot_dir("many"), MAX_MACHINE_SLOTS + 1)
            .err()
            .expect("refused");
        assert!(e.contains("slots is not"), "{e}");
    }

    #[test]
    fn a_new_directory_is_private() {
        let dir = slot_dir("private");
        MachineSlots::new(dir.clone(), 1).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let _ = std::fs::remove_dir_all(dir);
    }
}
