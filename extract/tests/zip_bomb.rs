//! Zip bombs disguised as Word documents are refused without inflating them: the allocator of
//! this test binary counts bytes, and extraction must stay far below the bomb's 200 MB.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use colloquy_extract::{extract, sniff, ExtractError, Format, Limits};

/// The system allocator, keeping for each thread the bytes it has allocated and their
/// high-water mark: tests run on parallel threads, and only the measured thread's allocations
/// may count (memory freed by another thread than the one that allocated it only lowers that
/// thread's figure, hence signed counters).
struct Counting;

thread_local! {
    static CURRENT: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn grew(by: usize) {
    let by = isize::try_from(by).unwrap_or(isize::MAX);
    // `try_with`: a thread being torn down has no counters left; its allocations do not count.
    let _ = CURRENT.try_with(|current| {
        let now = current.get().saturating_add(by);
        current.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

fn shrank(by: usize) {
    let by = isize::try_from(by).unwrap_or(isize::MAX);
    let _ = CURRENT.try_with(|current| current.set(current.get().saturating_sub(by)));
}

// SAFETY: every call is forwarded to `System` unchanged; only thread-local counters (const
// initialised, so touching them never allocates) are updated around it.
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
        shrank(layout.size());
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let moved = unsafe { System.realloc(pointer, layout, new_size) };
        if !moved.is_null() {
            shrank(layout.size());
            grew(new_size);
        }
        moved
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f` on this thread and returns its result with the most bytes it had allocated at
/// once (extraction runs on the calling thread).
fn peak_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let baseline = CURRENT.with(Cell::get);
    PEAK.with(|peak| peak.set(baseline));
    let result = f();
    let peak = PEAK.with(Cell::get);
    (result, usize::try_from(peak.saturating_sub(baseline)).unwrap_or(0))
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
