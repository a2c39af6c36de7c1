//! Link settings for the component build only.
fn main() {
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    if arch == "wasm32" {
        // The default 1 MiB shadow stack is most of an instance's memory; the policy needs a
        // few KiB. 64 KiB keeps each instance near 192 KiB.
        println!("cargo:rustc-link-arg-cdylib=-zstack-size=65536");
    }
}
