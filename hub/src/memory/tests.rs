//! The packing regions, with [`Allocator`] as the tests' global allocator (see `lib.rs`).

use super::*;

/// Packs `make` until it lands in a region: other tests may hold every region for a moment.
fn packed_in_region<T>(make: impl Fn() -> T, first: impl Fn(&T) -> *mut u8) -> (T, usize) {
    for _ in 0..500 {
        let made = packed(&make);
        if let Some(index) = region_of(first(&made)) {
            return (made, index);
        }
        drop(made);
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("no region came free");
}

fn names() -> Vec<String> {
    (0..2000).map(|n| format!("greenhouse-{n:05}")).collect()
}

#[test]
fn a_packing_s_copies_sit_side_by_side_and_their_pages_go_back_when_the_last_is_freed() {
    let (names, index) = packed_in_region(names, |v| v.as_ptr() as *mut u8);
    let region = &REGION[index];
    for name in &names {
        assert_eq!(region_of(name.as_ptr() as *mut u8), Some(index));
    }
    let base = region.base.load(Ordering::SeqCst);
    let used = region.used.load(Ordering::SeqCst);
    // The vector (2000 x 24 bytes) and 2000 names (16 bytes, `format!` reserves a little
    // more): nothing else in between.
    assert!(used <= 2000 * 24 + 2000 * 32, "{used} bytes used");
    assert!(names.iter().all(|n| (n.as_ptr() as usize) < base + used));
    assert_eq!(region.state.load(Ordering::SeqCst), RETIRED);
    assert_eq!(region.live.load(Ordering::SeqCst), 2001);
    assert_eq!(names[1999], "greenhouse-01999");

    let mut names = names;
    let last = names.pop();
    drop(names);
    assert_eq!(region.live.load(Ordering::SeqCst), 1);
    assert_eq!(region.state.load(Ordering::SeqCst), RETIRED);
    drop(last);
    // Released: free for the next packing, its pages given back.
    assert_eq!(region.used.load(Ordering::SeqCst), 0);
    assert_ne!(region.state.load(Ordering::SeqCst), RETIRED);
}

#[test]
fn a_packed_block_that_grows_moves_to_the_heap_with_its_bytes() {
    let (mut name, index) = packed_in_region(
        || String::from("device-a"),
        |s: &String| s.as_ptr() as *mut u8,
    );
    name.push_str("-with-a-longer-name-than-it-had");
    assert_eq!(region_of(name.as_ptr() as *mut u8), None);
    assert_eq!(name, "device-a-with-a-longer-name-than-it-had");
    // The grown block left the region, which held nothing else: released.
    assert_eq!(REGION[index].used.load(Ordering::SeqCst), 0);
}

#[test]
fn outside_a_packing_and_on_other_threads_blocks_come_from_the_heap() {
    let outside = String::from("outside");
    assert_eq!(region_of(outside.as_ptr() as *mut u8), None);
    let (other, inside) = packed(|| {
        let other = std::thread::spawn(|| String::from("other thread"))
            .join()
            .unwrap();
        (other, String::from("inside"))
    });
    assert_eq!(region_of(other.as_ptr() as *mut u8), None);
    // `inside` is in a region unless every region was taken by other tests.
    if let Some(index) = region_of(inside.as_ptr() as *mut u8) {
        assert_eq!(REGION[index].live.load(Ordering::SeqCst), 1);
    }
}

#[test]
fn what_a_region_has_no_room_for_goes_to_the_heap_and_a_failed_packing_ends_its_region() {
    let big = packed(|| vec![7u8; REGION_BYTES + 1]);
    assert_eq!(region_of(big.as_ptr() as *mut u8), None);
    assert!(big.iter().all(|b| *b == 7));
    let zeroed = packed(|| vec![0u64; 1000]);
    assert!(zeroed.iter().all(|n| *n == 0));

    let panicked = std::panic::catch_unwind(|| packed(|| panic!("while packing")));
    assert!(panicked.is_err());
    assert_eq!(FILLING_REGION.get(), NONE);
    let after = String::from("after");
    assert_eq!(region_of(after.as_ptr() as *mut u8), None);
}
