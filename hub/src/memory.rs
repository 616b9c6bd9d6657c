//! Memory the allocator holds free, given back to the system; and long-lived data packed
//! together after a load.
//!
//! glibc keeps what a load freed for later use; `malloc_trim` hands every free page back. The hub
//! calls [`give_back`] once it is ready, every few seconds, and right after a part has let a
//! load's memory go (the store's cache emptied, MQTT sessions packed), so an idle hub returns to
//! its footprint without waiting for the next period.
//!
//! A free page can only go back when nothing on it is live. During a load, the records of the
//! devices that came (the store's catalog, the presence map, the MQTT sessions) are allocated one
//! by one among the load's short-lived buffers, all over the heap; afterwards each keeps a page
//! or two around it resident. Measured after the overload bench's three loads (2,100 new
//! devices): heaptrack counted about 4 MB live, the hub held 21.0 MB. Those parts copy their
//! records once the load is over ("packing"); copied into the heap, the copies filled its holes,
//! all over it again. Inside [`packed`], they are placed side by side in a region of their own
//! ([`Allocator`]) instead, and the old copies are freed with the pages around them: 13.7 and
//! 14.5 MB after the same loads, about what a hub restarted on that store holds (13.5 MB).
//!
//! A region serves one packing. It is a reserved range of address space whose pages the kernel
//! provides as they are first written; the allocations of one packing are placed one after the
//! other, never reused. When every allocation of a region has been freed (the next packing made
//! new copies and dropped the old), its pages go back to the system and it serves again.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

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

/// Regions: two for each packing part (catalog, presence, sessions), which holds one with its
/// last packing's copies while it fills the next; a packing that finds none free goes on in the
/// heap. Only address space: a region takes memory as it is written.
const REGIONS: usize = 6;
/// Address space reserved per region. A packing that needs more goes on in the heap.
const REGION_BYTES: usize = 32 << 20;

/// No region, or free.
const FREE: u8 = 0;
/// Taken by a packing under way.
const FILLING: u8 = 1;
/// Its packing is over; it is released when its last allocation is freed.
const RETIRED: u8 = 2;
/// Being released.
const RELEASING: u8 = 3;

struct Region {
    /// Start of its reserved range, 0 before first use (kept for the process's life).
    base: AtomicUsize,
    /// Bytes placed so far.
    used: AtomicUsize,
    /// Allocations placed in it and not yet freed.
    live: AtomicUsize,
    state: AtomicU8,
}

#[allow(clippy::declare_interior_mutable_const)]
const UNUSED: Region = Region {
    base: AtomicUsize::new(0),
    used: AtomicUsize::new(0),
    live: AtomicUsize::new(0),
    state: AtomicU8::new(FREE),
};

static REGION: [Region; REGIONS] = [UNUSED; REGIONS];

/// No region is being filled by this thread.
const NONE: usize = usize::MAX;

thread_local! {
    /// The region this thread's allocations go to, inside [`packed`].
    static FILLING_REGION: Cell<usize> = const { Cell::new(NONE) };
}

/// Runs `pack` with this thread's allocations placed side by side in a region of their own (see
/// the module's notes); in the heap as usual when no region is free, none can be reserved, or
/// [`Allocator`] is not the global allocator. `pack` should copy long-lived data and drop the old
/// copies; what it allocates and frees at once only takes room in the region until the region
/// is released.
pub fn packed<T>(pack: impl FnOnce() -> T) -> T {
    if FILLING_REGION.get() != NONE {
        return pack();
    }
    let Some(index) = claim() else {
        return pack();
    };
    FILLING_REGION.set(index);
    let _filling = Filling(index);
    pack()
}

/// Ends a packing into region `.0` however `pack` ends.
struct Filling(usize);

impl Drop for Filling {
    fn drop(&mut self) {
        FILLING_REGION.set(NONE);
        let region = &REGION[self.0];
        region.state.store(RETIRED, Ordering::SeqCst);
        if region.live.load(Ordering::SeqCst) == 0 {
            release(self.0);
        }
    }
}

/// Takes a free region, reserving its address space on first use.
fn claim() -> Option<usize> {
    for (index, region) in REGION.iter().enumerate() {
        if region
            .state
            .compare_exchange(FREE, FILLING, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            continue;
        }
        if region.base.load(Ordering::SeqCst) == 0 {
            match reserve() {
                Some(base) => region.base.store(base, Ordering::SeqCst),
                None => {
                    region.state.store(FREE, Ordering::SeqCst);
                    return None;
                }
            }
        }
        return Some(index);
    }
    None
}

/// Reserves [`REGION_BYTES`] of address space; pages are provided as they are first written.
fn reserve() -> Option<usize> {
    // SAFETY: an anonymous private mapping at an address the kernel picks touches no existing
    // memory; the result is checked.
    #[allow(unsafe_code)]
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            REGION_BYTES,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    (base != libc::MAP_FAILED).then_some(base as usize)
}

/// Gives a retired region's pages back and makes it free, once (a packing ending and its last
/// allocation being freed may both get here).
fn release(index: usize) {
    let region = &REGION[index];
    if region
        .state
        .compare_exchange(RETIRED, RELEASING, Ordering::SeqCst, Ordering::SeqCst)
        .is_err()
    {
        return;
    }
    let used = region.used.swap(0, Ordering::SeqCst);
    if used > 0 {
        // SAFETY: the range is this region's own mapping, and nothing in it is live: its every
        // allocation was freed and no packing places more until it is free again. Its pages
        // read as zeroes afterwards.
        #[allow(unsafe_code)]
        unsafe {
            libc::madvise(
                region.base.load(Ordering::SeqCst) as *mut libc::c_void,
                used,
                libc::MADV_DONTNEED,
            );
        }
    }
    region.state.store(FREE, Ordering::SeqCst);
}

/// The region holding `ptr`, if any.
fn region_of(ptr: *mut u8) -> Option<usize> {
    let at = ptr as usize;
    REGION.iter().position(|region| {
        let base = region.base.load(Ordering::Relaxed);
        base != 0 && at >= base && at < base + REGION_BYTES
    })
}

/// Places `layout` in the region this thread fills, if any and it has room; null otherwise.
fn place(layout: Layout) -> *mut u8 {
    let index = FILLING_REGION.get();
    if index == NONE {
        return std::ptr::null_mut();
    }
    let region = &REGION[index];
    let base = region.base.load(Ordering::Relaxed);
    let used = region.used.load(Ordering::Relaxed);
    let start = (base + used).next_multiple_of(layout.align());
    let Some(end) = start.checked_add(layout.size()) else {
        return std::ptr::null_mut();
    };
    if end > base + REGION_BYTES {
        return std::ptr::null_mut();
    }
    region.used.store(end - base, Ordering::Relaxed);
    region.live.fetch_add(1, Ordering::SeqCst);
    start as *mut u8
}

/// The system allocator, except inside [`packed`]; install it with `#[global_allocator]`.
pub struct Allocator;

// SAFETY: every block comes from `System` or from a region's own mapping, is at least
// `layout.size()` long and aligned to `layout.align()`, and is never handed out twice while live
// (a region only places new blocks after its end, and is only reused once all its blocks were
// freed); each block is freed by whoever placed it.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let placed = place(layout);
        if !placed.is_null() {
            return placed;
        }
        // SAFETY: as the caller promised for `layout`.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let placed = place(layout);
        if !placed.is_null() {
            // SAFETY: the block was just placed, `layout.size()` bytes long.
            unsafe { std::ptr::write_bytes(placed, 0, layout.size()) };
            return placed;
        }
        // SAFETY: as the caller promised for `layout`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        match region_of(ptr) {
            Some(index) => {
                let region = &REGION[index];
                if region.live.fetch_sub(1, Ordering::SeqCst) == 1
                    && region.state.load(Ordering::SeqCst) == RETIRED
                {
                    release(index);
                }
            }
            // SAFETY: not a region's, so System's, with `layout` as the caller promised.
            None => unsafe { System.dealloc(ptr, layout) },
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if region_of(ptr).is_none() {
            // SAFETY: System's block, as the caller promised.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // A region's blocks do not grow in place: a new block, the bytes copied, the old freed.
        // SAFETY: the caller promised a valid size for `layout.align()`.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: `new_layout` is valid and non-zero in size, as the caller promised.
        let moved = unsafe { self.alloc(new_layout) };
        if !moved.is_null() {
            // SAFETY: both blocks are at least the smaller size long and do not overlap (the
            // new one is live alongside the old).
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, moved, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
        }
        moved
    }
}

#[cfg(test)]
mod tests;
