//! The default policy component as other runtimes see it: exactly the contract's export, and
//! no imports at all, so it runs unchanged under jco on Node or wasmtime-py with no WASI shim.

use backstop_core::contract::DECIDER_EXPORT;
use backstop_core::contract::WIT_VERSION;
use backstop_runtime::module::DEFAULT_POLICY_WASM;
use wasmtime::component::{Component, types::ComponentItem};

fn inspect() -> (wasmtime::Engine, Component) {
    let mut config = wasmtime::Config::new();
    config.wasm_component_model(true);
    let engine = wasmtime::Engine::new(&config).unwrap();
    let component =
        Component::from_binary(&engine, DEFAULT_POLICY_WASM).expect("a valid component");
    (engine, component)
}

#[test]
fn the_default_policy_imports_nothing() {
    let (engine, component) = inspect();
    let ty = component.component_type();
    let imports: Vec<&str> = ty.imports(&engine).map(|(name, _)| name).collect();
    assert_eq!(imports, Vec::<&str>::new(), "no WASI, no host functions");
}

#[test]
fn the_default_policy_exports_exactly_the_decider_interface() {
    let (engine, component) = inspect();
    let ty = component.component_type();
    let exports: Vec<&str> = ty.exports(&engine).map(|(name, _)| name).collect();
    assert_eq!(exports, [DECIDER_EXPORT]);

    let decider = ty.get_export(&engine, DECIDER_EXPORT).unwrap();
    let ComponentItem::ComponentInstance(instance) = decider.ty else {
        panic!("{DECIDER_EXPORT} is not an instance");
    };
    let mut functions: Vec<&str> = instance
        .exports(&engine)
        .filter(|(_, item)| matches!(item.ty, ComponentItem::ComponentFunc(_)))
        .map(|(name, _)| name)
        .collect();
    functions.sort_unstable();
    assert_eq!(functions, ["configure", "decide", "info", "route"]);
}

#[test]
fn the_default_policy_reports_the_contract_version_it_targets() {
    let engine = backstop::Engine::new(backstop::Limits::default()).unwrap();
    let module = engine.load_default().unwrap();
    assert_eq!(module.info().name, "backstop-default");
    assert_eq!(module.info().wit_version, WIT_VERSION);
    assert_eq!(module.contract_version(), WIT_VERSION);
    assert!(DECIDER_EXPORT.ends_with(&format!("@{}", module.info().wit_version)));
}

/// The contract's version is written once in Rust (`backstop_contract::wit_version!`); the WIT
/// file, the export the host demands and what the default policy reports all agree with it.
#[test]
fn the_contract_version_is_one_constant() {
    let wit = include_str!("../../wit/policy.wit");
    let package = wit
        .lines()
        .find_map(|line| line.trim().strip_prefix("package backstop:policy@"))
        .expect("the WIT declares its package");
    assert_eq!(package.trim_end_matches(';'), WIT_VERSION);
    assert_eq!(
        DECIDER_EXPORT,
        format!("backstop:policy/decider@{WIT_VERSION}")
    );
    let engine = backstop::Engine::new(backstop::Limits::default()).unwrap();
    let module = engine.load_default().unwrap();
    assert_eq!(module.info().wit_version, WIT_VERSION);
}
