//! The component's allocator: a bump arena that rewinds whenever nothing is allocated.
//!
//! Two lifetimes exist in a policy component. What `configure` builds (the policy and its
//! parameters: a chain's context windows, say) lives as long as the instance; everything else
//! lives for one call: the host lowers a context into memory it asks `cabi_realloc` for,
//! `decide` reads it, and all of it is freed when the call returns. So once `configure` is done
//! the arena [settles](settle): what is allocated then stays below a floor for good, and
//! whenever no block above the floor is live, the arena rewinds to it. Allocation is a pointer
//! bump and freeing a decrement — the general-purpose allocator this replaces cost more than
//! the policy itself. (Before the floor existed, a configured chain's parameters kept one block
//! live forever, the arena never rewound, and an instance hit the host's 16 MiB limit every
//! ~35,000 decisions: a memory fault, and the safe decision instead of the policy's.) A block
//! below the floor that is freed is not reused, and should a block ever outlive its call, the
//! arena simply keeps growing, up to the host's memory limit; that is a fault the host
//! contains, never a wrong answer.

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
    /// Where the arena rewinds to: everything below stays (0 until [`settle`]: the base).
    floor: usize,
    /// Blocks at or above the floor handed out and not yet freed.
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
    floor: 0,
    live: 0,
}));

/// Keeps what is allocated now for the instance's life: later calls rewind to here. The
/// authoring crate's glue calls it when `configure` has built the policy.
pub(crate) fn settle() {
    let state = state();
    state.floor = state.next;
    state.live = 0;
}

fn state() -> &'static mut State {
    // SAFETY: single-threaded, and no caller holds the reference across another call here.
    unsafe { &mut *STATE.0.get() }
}

impl State {
    /// A block is freed: one fewer live above the floor, and with none left the arena
    /// rewinds. Blocks below the floor are the instance's for good.
    fn release(&mut self, at: usize) {
        if at < self.floor {
            return;
        }
        self.live -= 1;
        if self.live == 0 {
            // The floor, or the base when the arena has moved above it (or never settled).
            self.next = self.floor.max(self.base);
        }
    }

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

    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        state().release(ptr as usize);
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
            state.release(at);
        }
        new
    }
}
