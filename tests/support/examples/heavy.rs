//! Writes test modules to files, to time and try them by hand:
//! `cargo run -p backstop-test-support --example heavy -- 500 heavy.wasm` (500 extra functions;
//! 0 for the sane module).
fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(n), Some(out)) = (args.next(), args.next()) else {
        eprintln!("usage: heavy FUNCTIONS OUT.wasm");
        std::process::exit(2);
    };
    let n: usize = n.parse().expect("a number of functions");
    let bytes = if n == 0 {
        backstop_test_support::sane_component("2.0.0")
    } else {
        backstop_test_support::heavy_component(n)
    };
    std::fs::write(out, bytes).expect("writable output");
}
