"""Runs a policy component under wasmtime-py: reads the same JSON as jco_decide.mjs on
stdin (camelCase fields, 64-bit numbers as decimal strings) and answers decisions and routes in
the same shape.
Usage: python3 wasmtime_py_decide.py <policy.wasm>"""
import json
import re
import sys

from wasmtime import Engine, Store, WasiConfig
from wasmtime import component as c

U64_FIELDS = {
    "elapsed-ms",
    "remaining-ms",
    "entropy",
    "in-state-ms",
    "retry-after-ms",
    "reservation",
    "expected-settled",
    "first-event-limit-ms",
    "idle-limit-ms",
    "start-p95-ms",
    "tokens-per-minute",
}


def kebab(name):
    return re.sub(r"[A-Z]", lambda m: "-" + m.group(0).lower(), name)


def camel(name):
    return re.sub(r"-([a-z])", lambda m: m.group(1).upper(), name)


def to_wasm(value, name=None):
    if isinstance(value, dict):
        record = c.Record()
        for key, item in value.items():
            field = kebab(key)
            setattr(record, field, to_wasm(item, field))
        return record
    if isinstance(value, list):
        return [to_wasm(item) for item in value]
    # 64-bit integers travel as decimal strings; a float of the same name (model-capacity's
    # tokens-per-minute is an f64 where model-facts' is a u64) stays a float.
    if name in U64_FIELDS and isinstance(value, str):
        return int(value)
    return value


def from_wasm(value):
    if isinstance(value, c.Variant):
        out = {"tag": value.tag}
        if value.payload is not None:
            payload = from_wasm(value.payload)
            out["val"] = str(payload) if value.tag in ("retry", "queue") else payload
        return out
    if isinstance(value, c.Record):
        return {
            camel(key): str(item) if key in ("delay-ms", "open-ms", "after-ms") else from_wasm(item)
            for key, item in vars(value).items()
        }
    return value


def destination(value):
    """A route's answer in the tagged shape: wasmtime-py lifts a variant whose cases' payloads
    differ in type (here a record, a u64 and an enum) without its tag."""
    if isinstance(value, c.Variant):
        return from_wasm(value)
    if isinstance(value, c.Record):
        return {"tag": "send", "val": from_wasm(value)}
    if isinstance(value, int):
        return {"tag": "queue", "val": str(value)}
    return {"tag": "give-up", "val": value}


def main():
    engine = Engine()
    store = Store(engine)
    # A component that imports WASI (a Python policy's runtime does) gets wasmtime-py's own.
    store.set_wasi(WasiConfig())
    component = c.Component.from_file(engine, sys.argv[1])
    linker = c.Linker(engine)
    linker.add_wasip2()
    instance = linker.instantiate(store, component)
    request = json.load(sys.stdin)
    decider = instance.get_export_index(store, request["export"])

    def func(name):
        return instance.get_func(store, instance.get_export_index(store, name, decider))

    configure, decide, route = func("configure"), func("decide"), func("route")
    configure(store, request["config"], to_wasm(request["models"]))
    decisions = [from_wasm(decide(store, to_wasm(ctx))) for ctx in request["contexts"]]
    routes = [destination(route(store, to_wasm(ctx))) for ctx in request["routes"]]
    json.dump({"decisions": decisions, "routes": routes}, sys.stdout)


main()
