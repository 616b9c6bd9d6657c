//! Memory the allocator holds free, given back to the system.
//!
//! glibc keeps what a load freed for later use; `malloc_trim` hands every free page back. The hub
//! calls [`give_back`] once it is ready, every few seconds, and right after a part has let a
//! load's memory go (the store's cache emptied), so an idle hub returns to its footprint without
//! waiting for the next period.

/// Returns the allocator's free pages to the system now. Costs a walk of the heap, a few
/// milliseconds at most; a no-op where the allocator is not glibc's.
pub fn give_back() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory of the allocator to the system; any thread
    // may call it at any time.
    #[allow(unsafe_code)]
    unsafe {
        libc::malloc_trim(0);
    }
}
