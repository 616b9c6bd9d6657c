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
//! false for that reading, and counted; every variable an expression reads is set from the
//! reading before each of its evaluations, so nothing one evaluation does to a variable (a
//! function such as `make_upper(x)` changes `x` in place) is seen by another.
//!
//! What an expression sees: `value` (the rule's metric in this reading), `device` (its id), and
//! every metric of the reading whose name is an identifier, by name. Integers are i64, other
//! numbers f64; a device's bool is a bool, its string a string.
//!
//! Cost: the names an expression reads are found once, when it is compiled (by Rhai itself: a
//! parse in strict-variables mode names the first variable it does not know); each rule keeps
//! its own [`Variables`] holding just those names, so an evaluation writes a few values in place
//! and allocates nothing unless a string (or the device, when read) changed.

use std::sync::OnceLock;

use device_protocol::OwnedValue;
use rhai::{AST, Dynamic, Engine, ImmutableString, ParseErrorType, Scope};

/// Operations one evaluation may take; a rule expression needs tens.
const MAX_OPERATIONS: u64 = 10_000;
/// Deepest nesting of an expression.
const MAX_DEPTH: usize = 32;
/// Largest string an evaluation may make.
const MAX_STRING: usize = 1024;
/// Longest expression text.
pub const MAX_EXPR_LEN: usize = 1024;
/// Names (metrics, `value`, `device`) one expression may read.
const MAX_NAMES: usize = 32;

fn capped(strict: bool) -> Engine {
    let mut engine = Engine::new();
    engine
        .set_max_operations(MAX_OPERATIONS)
        .set_max_expr_depths(MAX_DEPTH)
        .set_max_string_size(MAX_STRING)
        .set_strict_variables(strict)
        .on_print(|_| {})
        .on_debug(|_, _, _| {});
    engine
}

/// The engine that compiles and evaluates.
fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| capped(false))
}

/// The same in strict-variables mode, which refuses a name it was not told of: how the names an
/// expression reads are found.
fn strict_engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| capped(true))
}

/// One rule's variables for its expression, kept from one evaluation to the next: the names the
/// expression reads that the reading has, in the expression's order.
#[derive(Default)]
pub struct Variables {
    scope: Scope<'static>,
    /// Which of the expression's names `scope` holds (bit i: name i); `None` before the first.
    held: Option<u32>,
}

/// Where a name's value comes from in a reading.
#[derive(Clone, Copy)]
enum Source {
    Value,
    Device,
    Metric(usize),
}

/// A parsed expression.
#[derive(Debug)]
pub struct Expression {
    ast: AST,
    /// The names it reads, at most [`MAX_NAMES`].
    names: Vec<String>,
}

fn dynamic(value: &OwnedValue) -> Dynamic {
    match value {
        OwnedValue::F64(v) => Dynamic::from_float(*v),
        OwnedValue::I64(v) => Dynamic::from_int(*v),
        OwnedValue::Bool(v) => Dynamic::from_bool(*v),
        OwnedValue::Str(v) => Dynamic::from(v.clone()),
    }
}

impl Expression {
    /// Parses `text`; why not, in words.
    pub fn compile(text: &str) -> Result<Expression, String> {
        if text.len() > MAX_EXPR_LEN {
            return Err(format!("longer than {MAX_EXPR_LEN} characters"));
        }
        let ast = engine()
            .compile_expression(text)
            .map_err(|e| e.to_string())?;
        // Each strict parse names the first variable not in `known`; variables, never constants,
        // so the optimiser folds none of these placeholders into anything.
        let mut known = Scope::new();
        let mut names = Vec::new();
        loop {
            match strict_engine().compile_expression_with_scope(&known, text) {
                Ok(_) => return Ok(Expression { ast, names }),
                Err(e) => match e.err_type() {
                    ParseErrorType::VariableUndefined(name) if names.len() < MAX_NAMES => {
                        known.push_dynamic(name.as_str(), Dynamic::UNIT);
                        names.push(name.clone());
                    }
                    ParseErrorType::VariableUndefined(_) => {
                        return Err(format!("reads more than {MAX_NAMES} names"));
                    }
                    _ => return Err(e.to_string()),
                },
            }
        }
    }

    /// Evaluates it for one reading of `device` (`metrics`), `value` being the rule's metric,
    /// with the rule's `variables`: whether it is true; an error (counted by the caller) when it
    /// cannot be evaluated or gives no bool.
    pub fn eval(
        &self,
        variables: &mut Variables,
        device: &str,
        value: &OwnedValue,
        metrics: &[(String, OwnedValue)],
    ) -> Result<bool, String> {
        let mut sources = [None; MAX_NAMES];
        let mut held = 0u32;
        for (i, name) in self.names.iter().enumerate() {
            sources[i] = match name.as_str() {
                "value" => Some(Source::Value),
                "device" => Some(Source::Device),
                name => metrics
                    .iter()
                    .position(|(m, _)| m == name)
                    .map(Source::Metric),
            };
            if sources[i].is_some() {
                held |= 1 << i;
            }
        }
        // A name the reading lacks is left out, so reading it is an error, as it should be.
        if variables.held != Some(held) {
            variables.scope.clear();
            for (i, name) in self.names.iter().enumerate() {
                if sources[i].is_some() {
                    variables.scope.push_dynamic(name.as_str(), Dynamic::UNIT);
                }
            }
            variables.held = Some(held);
        }
        for (i, name) in self.names.iter().enumerate() {
            let (Some(source), Some(slot)) = (sources[i], variables.scope.get_mut(name)) else {
                continue;
            };
            match source {
                Source::Value => *slot = dynamic(value),
                Source::Metric(at) => *slot = dynamic(&metrics[at].1),
                Source::Device => {
                    let same = slot
                        .as_immutable_string_ref()
                        .is_ok_and(|held| held.as_str() == device);
                    if !same {
                        *slot = Dynamic::from(ImmutableString::from(device));
                    }
                }
            }
        }
        engine()
            .eval_ast_with_scope::<bool>(&mut variables.scope, &self.ast)
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
            Expression::compile(text).expect("parses").eval(
                &mut Variables::default(),
                "freezer-1",
                &value,
                &m,
            )
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
        let mut variables = Variables::default();
        let refused = expr
            .eval(&mut variables, "d", &long, &[])
            .expect_err("capped");
        assert!(refused.to_lowercase().contains("too large"), "{refused}");
        // Under the cap, the same expression works.
        let short = OwnedValue::Str("x".repeat(300));
        assert_eq!(expr.eval(&mut variables, "d", &short, &[]), Ok(false));
    }

    #[test]
    fn the_names_an_expression_reads_are_found_when_it_is_compiled() {
        let names = |text: &str| Expression::compile(text).expect("parses").names;
        assert_eq!(
            names("value > 30.0 && hum < 80 || abs(temp) > 1.5 && device == \"d\""),
            ["value", "hum", "temp", "device"]
        );
        assert_eq!(names("value && value"), ["value"]);
        assert!(names("1 < 2").is_empty());
        // A sum of more names than allowed, balanced so it is not too deep.
        fn sum(names: &[String]) -> String {
            match names {
                [one] => one.clone(),
                _ => {
                    let (left, right) = names.split_at(names.len() / 2);
                    format!("({} + {})", sum(left), sum(right))
                }
            }
        }
        let many: Vec<String> = (0..=MAX_NAMES).map(|i| format!("m{i}")).collect();
        let refused = Expression::compile(&format!("{} > 0", sum(&many))).expect_err("too many");
        assert!(refused.contains("names"), "{refused}");
    }

    #[test]
    fn each_evaluation_reads_its_own_reading_and_changes_nothing_for_the_next() {
        let m = metrics();
        let mut variables = Variables::default();
        let compile = |text: &str| Expression::compile(text).expect("parses");
        // A function that changes its argument in place: the next evaluation reads the reading
        // again, not what the last one left.
        let upper =
            compile("make_upper(mode) == () && make_upper(device) == () && mode == \"ECO\"");
        let eco = OwnedValue::Str("eco".into());
        assert_eq!(upper.eval(&mut variables, "d", &eco, &m), Ok(true));
        assert_eq!(upper.eval(&mut variables, "d", &eco, &m), Ok(true));
        let reads = compile("mode == \"eco\" && device == \"d\" && value > 30.0");
        let mut own = Variables::default();
        assert_eq!(
            reads.eval(&mut own, "d", &OwnedValue::F64(31.5), &m),
            Ok(true)
        );
        assert_eq!(
            reads.eval(&mut own, "d", &OwnedValue::F64(3.0), &m),
            Ok(false)
        );
        // Another device, other values, the same names: seen.
        let mut next = m.clone();
        next[3].1 = OwnedValue::Str("boost".into());
        let boost = compile("mode == \"boost\" && device == \"e\"");
        let mut own = Variables::default();
        assert_eq!(boost.eval(&mut own, "d", &eco, &m), Ok(false));
        assert_eq!(boost.eval(&mut own, "e", &eco, &next), Ok(true));
        // A reading without a metric the expression reads: an error, not the last value.
        let hum = compile("hum == 70");
        let mut own = Variables::default();
        assert_eq!(hum.eval(&mut own, "d", &eco, &m), Ok(true));
        let without: Vec<(String, OwnedValue)> =
            m.iter().filter(|(n, _)| n != "hum").cloned().collect();
        assert!(hum.eval(&mut own, "d", &eco, &without).is_err());
        assert_eq!(hum.eval(&mut own, "d", &eco, &m), Ok(true));
    }
}
