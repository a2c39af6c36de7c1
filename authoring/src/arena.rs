//! The component's allocator: a bump arena that rewinds whenever nothing is allocated.
//!
//! Every allocation in this component lives for one call: the host lowers a context into
//! memory it asks `cabi_realloc` for, `decide` reads it, and all of it is freed when the call
//! returns (the parameters set by `configure` hold no heap memory). So a count of live blocks
//! reaching zero means the whole arena is free again. Allocation is a pointer bump and freeing a
//! decrement — the general-purpose allocator this replaces cost more than the policy itself.
//! Should a block ever outlive its call, the arena simply keeps growing from where it is, up to
//! the host's memory limit; that is a fault the host contains, never a wrong answer.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;

const PAGE: usize = 65_536;

struct State {
    /// First byte of the arena (0 until the first allocation).
    base: usize,
    /// Next free byte.
    next: usize,
    /// End of the memory the arena owns.
    end: usize,
    /// Blocks handed out and not yet freed.
    live: usize,
}

pub struct Arena;

struct Cell(UnsafeCell<State>);
// SAFETY: a component instance runs on one thread.
unsafe impl Sync for Cell {}

static STATE: Cell = Cell(UnsafeCell::new(State {
    base: 0,
    next: 0,
    end: 0,
    live: 0,
}));

fn state() -> &'static mut State {
    // SAFETY: single-threaded, and no caller holds the reference across another call here.
    unsafe { &mut *STATE.0.get() }
}

impl State {
    fn bump(&mut self, layout: Layout) -> *mut u8 {
        let start = (self.next + layout.align() - 1) & !(layout.align() - 1);
        let Some(stop) = start.checked_add(layout.size()) else {
            return core::ptr::null_mut();
        };
        if stop > self.end || self.base == 0 {
            // Fresh pages at the end of memory; on the first call they start the arena.
            let need = if self.base == 0 {
                layout.size() + layout.align()
            } else {
                stop - self.end
            };
            let pages = need.div_ceil(PAGE).max(1);
            let old = core::arch::wasm32::memory_grow(0, pages);
            if old == usize::MAX {
                return core::ptr::null_mut();
            }
            if self.base == 0 || old * PAGE != self.end {
                // The first growth, or memory moved on without us: start over in the new pages.
                self.base = old * PAGE;
                self.next = self.base;
                self.end = self.base + pages * PAGE;
                return self.bump(layout);
            }
            self.end += pages * PAGE;
        }
        self.next = stop;
        self.live += 1;
        start as *mut u8
    }
}

unsafe impl GlobalAlloc for Arena {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        state().bump(layout)
    }

    unsafe fn dealloc(&self, _ptr: *mut u8, _layout: Layout) {
        let state = state();
        state.live -= 1;
        if state.live == 0 {
            state.next = state.base;
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let state = state();
        let at = ptr as usize;
        // The newest block grows (or shrinks) in place when it fits.
        if at + layout.size() == state.next && at + new_size <= state.end {
            state.next = at + new_size;
            return ptr;
        }
        // SAFETY: the caller guarantees a valid layout for the new size.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        let new = state.bump(new_layout);
        if !new.is_null() {
            // SAFETY: both blocks are valid for the copied length and do not overlap.
            unsafe { core::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size)) };
            state.live -= 1;
        }
        new
    }
}
