//! Keeps the process's memory flat across exports: a fixed malloc mmap threshold (glibc).

/// Blocks of at least this size are mapped on their own and unmapped when freed.
const MMAP_THRESHOLD: i32 = 512 * 1024;

/// glibc's malloc raises its mmap threshold whenever a mapped block is freed; blocks of that
/// size then come from the heap, where they fragment it and stay resident. exportd's RSS
/// crept by about 1 MiB per export that way (20 to 26 MiB over six 1M-row exports in one
/// process); with the threshold fixed it levels off after the first plain and gzip exports
/// (23 MiB). Long-lived large buffers are pooled by the engine, so they are mapped once.
/// An explicit `MALLOC_MMAP_THRESHOLD_` in the environment wins.
pub fn fix_mmap_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
        // SAFETY: mallopt only changes a malloc tunable; it is called before any other thread starts.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        }
    }
}
