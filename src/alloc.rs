//! Keeps the process's memory flat across exports: glibc malloc settings.

/// Blocks of at least this size are mapped on their own and unmapped when freed.
const MMAP_THRESHOLD: i32 = 512 * 1024;
/// Malloc arenas at most (glibc's default allows 8 per core).
const ARENA_MAX: i32 = 2;

/// Two glibc malloc defaults let exportd's memory creep from one export to the next:
/// - the mmap threshold rises whenever a mapped block is freed; blocks of that size then come
///   from the heap, where they fragment it and stay resident. RSS crept by about 1 MiB per
///   export (20 to 26 MiB over six 1M-row exports in one process); with a fixed threshold it
///   levels off at about 23 MiB after the first plain and first gzip export;
/// - every thread that allocates may get an arena of its own, and the blocking threads that
///   write and compress files come and go: over three 5M-row exports RSS went 19, 24, 25 MiB
///   with the default, 19, 22, 23 MiB with two arenas.
///
/// Long-lived large buffers are pooled by the engine, so they are mapped once.
/// `MALLOC_MMAP_THRESHOLD_` or `MALLOC_ARENA_MAX` in the environment win.
pub fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let set = |env: &str, param: i32, value: i32| {
            if std::env::var_os(env).is_none() {
                // SAFETY: mallopt only changes a malloc tunable; it runs before any other thread starts.
                unsafe { libc::mallopt(param, value) };
            }
        };
        set("MALLOC_MMAP_THRESHOLD_", libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        set("MALLOC_ARENA_MAX", libc::M_ARENA_MAX, ARENA_MAX);
    }
}

/// Gives the heap's free pages back to the operating system (glibc's `malloc_trim`): after a
/// burst of connections (hundreds of downloads, say) their freed buffers would otherwise stay
/// resident until reused.
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases memory malloc holds free; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}
