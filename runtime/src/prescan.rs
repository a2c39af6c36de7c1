//! A look at a component's code before anything compiles it: the shape that makes compilers
//! slow or hungry (a lot of code, huge functions, deep nesting) is refused in one linear pass.
//!
//! This is the floor every compile gets, in process or not. It cannot bound every compile
//! (no pass short of compiling can), so hosts that take modules from others also compile in a
//! child process with a time and memory bound ([`isolation`](super::isolation)).

use crate::error::LoadError;
use wasmparser::{Operator, Parser, Payload};

/// Code bytes in all of a component's core modules. The default policy has about 60 KB; an
/// interpreter-based policy (Python, JavaScript) has up to about 20 MB.
pub const MAX_CODE_BYTES: usize = 24 << 20;
/// Bytes of one function body. Generated code (an interpreter's dispatch loop) reaches a few
/// hundred KB.
pub const MAX_FUNCTION_BYTES: usize = 2 << 20;
/// Functions in all core modules.
pub const MAX_FUNCTIONS: usize = 250_000;
/// Blocks, loops and ifs open at once in one function. Compilers produce a few dozen; deep
/// nesting is a known way to make optimising compilers slow.
pub const MAX_NESTING: usize = 1_000;

/// Refuses `bytes` when their code exceeds a bound; `Ok` for anything else (malformed bytes
/// are left for the compiler to name).
pub fn prescan(bytes: &[u8], origin: &str) -> Result<(), LoadError> {
    let refuse = |reason: String| LoadError::TooComplex {
        origin: origin.to_string(),
        reason,
    };
    let (mut code, mut functions) = (0usize, 0usize);
    for payload in Parser::new(0).parse_all(bytes) {
        let Ok(payload) = payload else {
            return Ok(());
        };
        let Payload::CodeSectionEntry(body) = payload else {
            continue;
        };
        let size = body.range().len();
        functions += 1;
        code += size;
        if size > MAX_FUNCTION_BYTES {
            return Err(refuse(format!(
                "function {functions} has {size} bytes of code; at most {MAX_FUNCTION_BYTES} are accepted"
            )));
        }
        if code > MAX_CODE_BYTES {
            return Err(refuse(format!(
                "more than {MAX_CODE_BYTES} bytes of code; split or shrink the policy"
            )));
        }
        if functions > MAX_FUNCTIONS {
            return Err(refuse(format!("more than {MAX_FUNCTIONS} functions")));
        }
        let Ok(mut operators) = body.get_operators_reader() else {
            return Ok(());
        };
        let mut depth = 0usize;
        while !operators.eof() {
            let Ok(operator) = operators.read() else {
                return Ok(());
            };
            match operator {
                Operator::Block { .. }
                | Operator::Loop { .. }
                | Operator::If { .. }
                | Operator::TryTable { .. }
                | Operator::Try { .. } => {
                    depth += 1;
                    if depth > MAX_NESTING {
                        return Err(refuse(format!(
                            "function {functions} nests blocks more than {MAX_NESTING} deep"
                        )));
                    }
                }
                Operator::End => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(depth: usize) -> Vec<u8> {
        let body = format!("{}{}", "(block ".repeat(depth), ")".repeat(depth));
        wat::parse_str(format!("(module (func {body}))")).unwrap()
    }

    #[test]
    fn deep_nesting_is_refused_and_ordinary_nesting_passes() {
        assert!(prescan(&nested(MAX_NESTING), "ok.wasm").is_ok());
        let error = prescan(&nested(MAX_NESTING + 1), "deep.wasm").unwrap_err();
        assert!(
            error
                .to_string()
                .contains("nests blocks more than 1000 deep"),
            "{error}"
        );
    }
}
