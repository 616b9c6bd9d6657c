//! Owned counterparts of the borrowed message types (feature `alloc`).
//!
//! [`OwnedValue`] has the same variants in the same order as [`Value`], so both encode to the same
//! postcard bytes and one can be decoded as the other.

use alloc::string::String;

use serde::{Deserialize, Serialize};

use crate::Value;

/// An owned [`Value`]: same variants, same order, same postcard bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum OwnedValue {
    /// A floating-point number.
    F64(f64),
    /// A signed integer.
    I64(i64),
    /// A boolean.
    Bool(bool),
    /// A string.
    Str(String),
}

impl OwnedValue {
    /// Borrows this value as a [`Value`].
    pub fn as_value(&self) -> Value<'_> {
        match self {
            OwnedValue::F64(x) => Value::F64(*x),
            OwnedValue::I64(x) => Value::I64(*x),
            OwnedValue::Bool(x) => Value::Bool(*x),
            OwnedValue::Str(s) => Value::Str(s),
        }
    }
}

impl From<&Value<'_>> for OwnedValue {
    fn from(value: &Value<'_>) -> Self {
        match value {
            Value::F64(x) => OwnedValue::F64(*x),
            Value::I64(x) => OwnedValue::I64(*x),
            Value::Bool(x) => OwnedValue::Bool(*x),
            Value::Str(s) => OwnedValue::Str(String::from(*s)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_bytes_as_value() {
        let values = [
            Value::F64(-2.5),
            Value::I64(i64::MIN),
            Value::Bool(true),
            Value::Str("héllo"),
        ];
        for value in values {
            let owned = OwnedValue::from(&value);
            assert_eq!(owned.as_value(), value);
            let borrowed_bytes = postcard::to_allocvec(&value).unwrap();
            let owned_bytes = postcard::to_allocvec(&owned).unwrap();
            assert_eq!(borrowed_bytes, owned_bytes);
            let back: OwnedValue = postcard::from_bytes(&borrowed_bytes).unwrap();
            assert_eq!(back, owned);
        }
    }
}
