//! The runtime a `#![no_std]` policy lacks (feature `no-std-runtime`): the global allocator,
//! a panic that becomes a trap the host contains, and the canonical ABI's allocator export.

#[global_allocator]
static ALLOCATOR: crate::arena::Arena = crate::arena::Arena;

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    core::arch::wasm32::unreachable()
}

// wasm32-wasip2's compiler-builtins expects libc's memcpy/memset; wasi-libc's are pure code and
// add no import.
#[link(name = "c")]
unsafe extern "C" {}

/// The canonical ABI's allocator export. On wasip2 wit-bindgen leaves it to wasi-libc, which a
/// `no_std` build does not link, so the runtime provides it over the global allocator.
#[unsafe(no_mangle)]
unsafe extern "C" fn cabi_realloc(
    old_ptr: *mut u8,
    old_len: usize,
    align: usize,
    new_len: usize,
) -> *mut u8 {
    use alloc::alloc::{Layout, alloc, realloc};
    // SAFETY: the canonical ABI passes a valid alignment and, when `old_len` is not zero, a
    // pointer this allocator returned with that layout.
    let ptr = unsafe {
        if old_len == 0 {
            if new_len == 0 {
                return align as *mut u8;
            }
            alloc(Layout::from_size_align_unchecked(new_len, align))
        } else {
            realloc(
                old_ptr,
                Layout::from_size_align_unchecked(old_len, align),
                new_len,
            )
        }
    };
    if ptr.is_null() {
        core::arch::wasm32::unreachable();
    }
    ptr
}
