//! Rule expressions (`expr = "value > 30 && hum < 80"`), parsed and evaluated by Rhai.
//!
//! Rhai, not CEL: both are kept up, but the CEL interpreters for Rust bring a parser generator's
//! runtime and a regex engine, where Rhai, cut down by its features to expressions over numbers,
//! booleans and strings (no modules, functions, loops, arrays, maps or time), is a few hundred
//! kilobytes and has its own limits on work.
//!
//! Invariants: only an expression parses (`compile_expression`: no statements, so no loops or
//! assignments); one evaluation is capped in operations, nesting and string size, and cannot
//! print; an expression that fails to evaluate (an unknown name, a type mismatch, the cap) is
//! false for that reading, and counted.
//!
//! What an expression sees: `value` (the rule's metric in this reading), `device` (its id), and
//! every metric of the reading whose name is an identifier, by name. Integers are i64, other
//! numbers f64; a device's bool is a bool, its string a string.

use std::sync::OnceLock;

use device_protocol::OwnedValue;
use rhai::{AST, Dynamic, Engine, Scope};

/// Operations one evaluation may take; a rule expression needs tens.
const MAX_OPERATIONS: u64 = 10_000;
/// Deepest nesting of an expression.
const MAX_DEPTH: usize = 32;
/// Largest string an evaluation may make.
const MAX_STRING: usize = 1024;
/// Longest expression text.
pub const MAX_EXPR_LEN: usize = 1024;

fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut engine = Engine::new();
        engine
            .set_max_operations(MAX_OPERATIONS)
            .set_max_expr_depths(MAX_DEPTH)
            .set_max_string_size(MAX_STRING)
            .on_print(|_| {})
            .on_debug(|_, _, _| {});
        engine
    })
}

/// A parsed expression.
#[derive(Debug)]
pub struct Expression {
    ast: AST,
}

fn dynamic(value: &OwnedValue) -> Dynamic {
    match value {
        OwnedValue::F64(v) => Dynamic::from_float(*v),
        OwnedValue::I64(v) => Dynamic::from_int(*v),
        OwnedValue::Bool(v) => Dynamic::from_bool(*v),
        OwnedValue::Str(v) => Dynamic::from(v.clone()),
    }
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl Expression {
    /// Parses `text`; why not, in words.
    pub fn compile(text: &str) -> Result<Expression, String> {
        if text.len() > MAX_EXPR_LEN {
            return Err(format!("longer than {MAX_EXPR_LEN} characters"));
        }
        engine()
            .compile_expression(text)
            .map(|ast| Expression { ast })
            .map_err(|e| e.to_string())
    }

    /// Evaluates it for one reading: whether it is true; an error (counted by the caller) when it
    /// cannot be evaluated or gives no bool.
    pub fn eval(
        &self,
        device: &str,
        value: &OwnedValue,
        metrics: &[(String, OwnedValue)],
    ) -> Result<bool, String> {
        let mut scope = Scope::new();
        for (name, v) in metrics {
            if is_identifier(name) && name != "value" && name != "device" {
                scope.push_constant_dynamic(name.as_str(), dynamic(v));
            }
        }
        scope.push_constant_dynamic("value", dynamic(value));
        scope.push_constant("device", device.to_owned());
        engine()
            .eval_ast_with_scope::<bool>(&mut scope, &self.ast)
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics() -> Vec<(String, OwnedValue)> {
        vec![
            ("temp".into(), OwnedValue::F64(31.5)),
            ("hum".into(), OwnedValue::I64(70)),
            ("door".into(), OwnedValue::Bool(true)),
            ("mode".into(), OwnedValue::Str("eco".into())),
            ("odd.name".into(), OwnedValue::I64(1)),
        ]
    }

    #[test]
    fn expressions_read_value_device_and_the_readings_metrics() {
        let m = metrics();
        let value = OwnedValue::F64(31.5);
        let eval = |text: &str| {
            Expression::compile(text)
                .expect("parses")
                .eval("freezer-1", &value, &m)
        };
        assert_eq!(eval("value > 30.0 && hum < 80"), Ok(true));
        assert_eq!(eval("temp > 40.0 || door"), Ok(true));
        assert_eq!(eval("mode == \"eco\" && device == \"freezer-1\""), Ok(true));
        assert_eq!(eval("value < 0.0"), Ok(false));
        assert!(eval("missing > 1").is_err(), "an unknown name is an error");
        assert!(eval("value + 1.0").is_err(), "a number is not a bool");
    }

    #[test]
    fn statements_and_long_or_deep_expressions_are_refused() {
        assert!(Expression::compile("value > ").is_err());
        assert!(Expression::compile("let x = 1; x > 0").is_err());
        assert!(Expression::compile("loop { }").is_err());
        assert!(Expression::compile("while true { }").is_err());
        assert!(Expression::compile(&"(".repeat(200)).is_err());
        assert!(Expression::compile(&"1 + ".repeat(400)).is_err());
    }

    #[test]
    fn evaluation_work_is_capped() {
        // A string built past the cap is refused, not built.
        let long = OwnedValue::Str("x".repeat(600));
        let expr = Expression::compile("value + value == \"\"").expect("parses");
        let refused = expr.eval("d", &long, &[]).expect_err("capped");
        assert!(refused.to_lowercase().contains("too large"), "{refused}");
        // Under the cap, the same expression works.
        let short = OwnedValue::Str("x".repeat(300));
        assert_eq!(expr.eval("d", &short, &[]), Ok(false));
    }
}
