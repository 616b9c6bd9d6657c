//! Arbitrary bytes into `hub::store::block::decode`: it must never panic, never allocate more
//! than the block caps allow (a fixed bound, plus a multiple of the input for what scales
//! with it), and what it decodes must encode again and decode to the same readings, floats
//! compared by their bits.

#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use device_protocol::OwnedValue;
use hub::store::block::{
    self, MAX_BLOCK_STRING_BYTES, MAX_BLOCK_VALUES, MAX_BODY_BYTES, decode, encode, summarize,
};
use hub::store::records::ReadingRecord;
use libfuzzer_sys::fuzz_target;

/// Counts the bytes live on the heap and the most since the last reset.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let live = LIVE.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

// SAFETY: every call is passed to the system allocator unchanged; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            // Both buffers may be live at once while it copies.
            grew(new_size);
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// What a decode may allocate at most: the decompressed columns, the decoded readings and
/// their strings, scratch columns and maps over at most `MAX_BLOCK_VALUES` values, and the
/// thread's zstd context (kept from the first decode on); plus a multiple of the input for the
/// header's metrics and string dictionaries, which are as many as the bytes say.
fn bound(input_len: usize) -> usize {
    let readings = block::MAX_BLOCK_READINGS * 256;
    let values = MAX_BLOCK_VALUES * 160;
    let strings = 2 * MAX_BLOCK_STRING_BYTES;
    let zstd_context = 1 << 20;
    MAX_BODY_BYTES + readings + values + strings + zstd_context + 64 * input_len
}

fn same_value(a: &OwnedValue, b: &OwnedValue) -> bool {
    match (a, b) {
        (OwnedValue::F64(x), OwnedValue::F64(y)) => x.to_bits() == y.to_bits(),
        _ => a == b,
    }
}

fn same(a: &[(u64, ReadingRecord)], b: &[(u64, ReadingRecord)]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|((ao, a), (bo, b))| {
            ao == bo
                && (a.device, a.seq, a.timestamp_ms, a.origin)
                    == (b.device, b.seq, b.timestamp_ms, b.origin)
                && a.metrics.len() == b.metrics.len()
                && a.metrics
                    .iter()
                    .zip(&b.metrics)
                    .all(|((ai, av), (bi, bv))| ai == bi && same_value(av, bv))
        })
}

fuzz_target!(|data: &[u8]| {
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let decoded = decode(data);
    let peak = PEAK.load(Ordering::Relaxed) - before;
    assert!(
        peak <= bound(data.len()),
        "decoding {} bytes allocated {peak} bytes at its peak",
        data.len()
    );

    let summary = summarize(data);
    let Ok(readings) = decoded else {
        return;
    };
    // A block that decodes has a header that reads.
    let summary = summary.expect("the header of a block that decodes");
    assert_eq!(summary.readings, readings.len());
    let again = encode(&readings).expect("decoded readings encode again");
    let back = decode(&again).expect("a block just encoded decodes");
    assert!(
        same(&back, &readings),
        "the readings change on a second round trip"
    );
});
