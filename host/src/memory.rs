//! Process-wide memory settings, applied before anything allocates much.

/// glibc raises its mmap threshold to the size of every large block freed,
/// so after the first few password hashes (19 MiB of argon2 blocks each),
/// later ones come from the heap and stay resident when freed: a gestor
/// that hashed on two threads sat at ~250 MiB with 160 users. A fixed
/// threshold keeps large blocks mmapped, returned to the system on free
/// (the same gestores then held 16 MiB; examples/bench/run.py reads it).
pub fn return_large_blocks_to_the_system() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const THRESHOLD: libc::c_int = 1 << 20;
        // SAFETY: mallopt only changes allocator parameters; it is called
        // at start-up, before other threads exist.
        let ok = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, THRESHOLD) };
        if ok != 1 {
            tracing::debug!("mallopt(M_MMAP_THRESHOLD) refused; large blocks may stay resident");
        }
    }
}
