//! Zip bombs disguised as Word documents are refused without inflating them: the allocator of
//! this test binary counts bytes, and extraction must stay far below the bomb's 200 MB.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use colloquy_extract::{extract, sniff, ExtractError, Format, Limits};

/// The system allocator, keeping the bytes currently allocated and their high-water mark.
struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let now = CURRENT.fetch_add(by, Ordering::SeqCst) + by;
    PEAK.fetch_max(now, Ordering::SeqCst);
}

// SAFETY: every call is forwarded to `System` unchanged; only counters are updated around it.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let pointer = unsafe { System.alloc(layout) };
        if !pointer.is_null() {
            grew(layout.size());
        }
        pointer
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        unsafe { System.dealloc(pointer, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::SeqCst);
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let moved = unsafe { System.realloc(pointer, layout, new_size) };
        if !moved.is_null() {
            CURRENT.fetch_sub(layout.size(), Ordering::SeqCst);
            grew(new_size);
        }
        moved
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// One measurement at a time: tests run on parallel threads and share the counters.
static MEASURING: Mutex<()> = Mutex::new(());

/// Runs `f` and returns its result with the most bytes it had allocated at once.
fn peak_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let _guard = MEASURING.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let baseline = CURRENT.load(Ordering::SeqCst);
    PEAK.store(baseline, Ordering::SeqCst);
    let result = f();
    (result, PEAK.load(Ordering::SeqCst).saturating_sub(baseline))
}

const MIB: usize = 1024 * 1024;

#[test]
fn an_honest_bomb_is_refused_before_inflating() {
    let bomb = support::zip_bomb(support::BOMB_SIZE);
    assert!(bomb.len() < MIB, "the fixture itself is small: {} bytes", bomb.len());
    assert_eq!(sniff(&bomb, Some("report.docx")), Ok(Format::Docx), "disguised as a docx");

    let (result, peak) = peak_allocation(|| extract(Format::Docx, &bomb, &Limits::default()));
    let error = result.unwrap_err();
    assert_eq!(error.code(), "archive_limits", "{error}");
    assert!(error.to_string().contains("compressed"), "refused for its ratio: {error}");
    assert!(peak < MIB, "nothing inflated: peak {peak} bytes");
}

#[test]
fn an_honest_bomb_is_refused_by_the_total_size_too() {
    let bomb = support::zip_bomb(support::BOMB_SIZE);
    let limits = Limits { zip_max_ratio: u64::MAX, zip_max_total_uncompressed: 100 * 1024 * 1024, ..Limits::default() };
    let error = extract(Format::Docx, &bomb, &limits).unwrap_err();
    assert_eq!(error.code(), "archive_limits");
    assert!(error.to_string().contains("inflate to more than"), "{error}");
}

#[test]
fn a_bomb_lying_about_its_size_is_refused_while_reading() {
    // Declares 4 KiB: the central directory passes every check.
    let bomb = support::zip_bomb(4096);
    let (result, peak) = peak_allocation(|| extract(Format::Docx, &bomb, &Limits::default()));
    assert_eq!(
        result,
        Err(ExtractError::ArchiveLimits("word/document.xml inflates past its declared size of 4096 bytes".into()))
    );
    assert!(peak < 4 * MIB, "inflating stopped at the declared size: peak {peak} bytes");
}

#[test]
fn a_bomb_lying_within_the_limits_inflates_no_further_than_it_claims() {
    // Declares 10 MiB: about 50 to 1 at this compressed size, within the default ratio and
    // total. Reading stops just past those 10 MiB instead of going on to 200.
    let bomb = support::zip_bomb(10 * 1024 * 1024);
    let (result, peak) = peak_allocation(|| extract(Format::Docx, &bomb, &Limits::default()));
    assert_eq!(result.unwrap_err().code(), "archive_limits");
    assert!(peak < 40 * MIB, "bounded by the declared size: peak {peak} bytes");
}

#[test]
fn too_many_entries_are_refused() {
    let names: Vec<String> = (0..20).map(|i| format!("word/media/image{i}.png")).collect();
    let mut entries: Vec<(&str, &[u8])> = names.iter().map(|name| (name.as_str(), &b"png"[..])).collect();
    entries.push(("word/document.xml", b"<w:document/>"));
    let archive = support::zip_of(&entries);
    let limits = Limits { zip_max_entries: 10, ..Limits::default() };
    let error = extract(Format::Docx, &archive, &limits).unwrap_err();
    assert_eq!(error.code(), "archive_limits");
    assert!(error.to_string().contains("21 entries"), "{error}");
}
