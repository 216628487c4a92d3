//! Python values to protobuf messages and back, by the messages' descriptors: a request is a
//! dict of field name to value (as protobuf's own Python classes take keyword arguments), an
//! answer a namespace whose fields read as attributes (as on protobuf's Python messages), so
//! the client's call definitions work on this core and on grpcio alike.

use std::collections::HashMap;

use bytes::Bytes;
use prost_reflect::{
    DynamicMessage, FieldDescriptor, Kind, MapKey, MessageDescriptor, ReflectMessage, Value,
};
use pyo3::exceptions::{PyOverflowError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyBytes, PyDict, PyList};

/// The message `desc` with the fields of `fields` (name -> value); a `None` value leaves its
/// field unset. An unknown name or a value of the wrong type is a `TypeError`, an integer out
/// of the field's range a `ValueError`, as protobuf's Python classes answer them.
pub fn message_from_py(
    desc: &MessageDescriptor,
    fields: &Bound<'_, PyDict>,
) -> PyResult<DynamicMessage> {
    let mut message = DynamicMessage::new(desc.clone());
    for (name, value) in fields.iter() {
        if value.is_none() {
            continue;
        }
        let name: String = name.extract()?;
        let field = desc.get_field_by_name(&name).ok_or_else(|| {
            PyTypeError::new_err(format!("{} has no field named {name:?}", desc.full_name()))
        })?;
        let value = field_from_py(&field, &value)
            .map_err(|e| annotate(e, &format!("{}.{name}", desc.full_name())))?;
        message.set_field(&field, value);
    }
    Ok(message)
}

fn annotate(err: PyErr, field: &str) -> PyErr {
    Python::attach(|py| {
        let text = format!("{field}: {}", err.value(py));
        if err.is_instance_of::<PyOverflowError>(py) || err.is_instance_of::<PyValueError>(py) {
            PyValueError::new_err(text)
        } else {
            PyTypeError::new_err(text)
        }
    })
}

fn field_from_py(field: &FieldDescriptor, value: &Bound<'_, PyAny>) -> PyResult<Value> {
    if field.is_map() {
        let Kind::Message(entry) = field.kind() else {
            unreachable!("a map field's kind is its entry message")
        };
        let (key_field, value_field) = (entry.map_entry_key_field(), entry.map_entry_value_field());
        let dict = value.cast::<PyDict>().map_err(|_| {
            PyTypeError::new_err(format!("expected a dict, got {}", type_name(value)))
        })?;
        let mut map = HashMap::with_capacity(dict.len());
        for (k, v) in dict.iter() {
            let key = match single_from_py(&key_field.kind(), &k)? {
                Value::String(s) => MapKey::String(s),
                Value::I32(n) => MapKey::I32(n),
                Value::I64(n) => MapKey::I64(n),
                Value::U32(n) => MapKey::U32(n),
                Value::U64(n) => MapKey::U64(n),
                Value::Bool(b) => MapKey::Bool(b),
                _ => return Err(PyTypeError::new_err("unsupported map key type")),
            };
            map.insert(key, single_from_py(&value_field.kind(), &v)?);
        }
        Ok(Value::Map(map))
    } else if field.is_list() {
        if value.is_instance_of::<PyBytes>() || value.extract::<&str>().is_ok() {
            return Err(PyTypeError::new_err(format!(
                "expected a sequence, got {}",
                type_name(value)
            )));
        }
        let kind = field.kind();
        let items = value
            .try_iter()?
            .map(|item| single_from_py(&kind, &item?))
            .collect::<PyResult<Vec<_>>>()?;
        Ok(Value::List(items))
    } else {
        single_from_py(&field.kind(), value)
    }
}

fn single_from_py(kind: &Kind, value: &Bound<'_, PyAny>) -> PyResult<Value> {
    Ok(match kind {
        Kind::Bool => {
            let b = value.cast::<PyBool>().map_err(|_| wrong(value, "bool"))?;
            Value::Bool(b.is_true())
        }
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Value::I32(int(value)?),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Value::I64(int(value)?),
        Kind::Uint32 | Kind::Fixed32 => Value::U32(int(value)?),
        Kind::Uint64 | Kind::Fixed64 => Value::U64(int(value)?),
        Kind::Float => Value::F32(value.extract::<f64>()? as f32),
        Kind::Double => Value::F64(value.extract()?),
        Kind::String => match value.cast::<PyBytes>() {
            // protobuf's classes take UTF-8 bytes for a string field too.
            Ok(b) => Value::String(
                std::str::from_utf8(b.as_bytes())
                    .map_err(|e| PyValueError::new_err(format!("bytes that are not UTF-8: {e}")))?
                    .to_owned(),
            ),
            Err(_) => Value::String(value.extract().map_err(|_| wrong(value, "str"))?),
        },
        Kind::Bytes => {
            let b = value.cast::<PyBytes>().map_err(|_| wrong(value, "bytes"))?;
            Value::Bytes(Bytes::copy_from_slice(b.as_bytes()))
        }
        Kind::Enum(_) => Value::EnumNumber(int(value)?),
        Kind::Message(desc) => {
            let dict = value.cast::<PyDict>().map_err(|_| wrong(value, "dict"))?;
            Value::Message(message_from_py(desc, dict)?)
        }
    })
}

/// An integer of the field's width: bools and floats are refused (`TypeError`), as protobuf
/// refuses them, and a value out of range is a `ValueError`.
fn int<'a, 'py, T>(value: &'a Bound<'py, PyAny>) -> PyResult<T>
where
    T: FromPyObject<'a, 'py>,
    T::Error: Into<PyErr>,
{
    if value.is_instance_of::<PyBool>() || !value.hasattr("__index__")? {
        return Err(wrong(value, "int"));
    }
    value.extract::<T>().map_err(|e| {
        let e: PyErr = e.into();
        Python::attach(|py| {
            if e.is_instance_of::<PyOverflowError>(py) {
                PyValueError::new_err(format!("value out of range: {value}"))
            } else {
                e
            }
        })
    })
}

fn wrong(value: &Bound<'_, PyAny>, expected: &str) -> PyErr {
    PyTypeError::new_err(format!("expected {expected}, got {}", type_name(value)))
}

fn type_name(value: &Bound<'_, PyAny>) -> String {
    value
        .get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".to_owned())
}

/// An answer from the daemon as a `types.SimpleNamespace` of every field of its type, with
/// protobuf's defaults for the fields the daemon did not send (an absent message reads as an
/// empty one): plain attributes, read as fast as any Python object's.
pub fn message_to_py(py: Python<'_>, message: &DynamicMessage) -> PyResult<Py<PyAny>> {
    static NAMESPACE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let namespace = NAMESPACE.get_or_try_init(py, || {
        Ok::<_, PyErr>(py.import("types")?.getattr("SimpleNamespace")?.unbind())
    })?;
    let fields = PyDict::new(py);
    for field in message.descriptor().fields() {
        fields.set_item(field.name(), value_to_py(py, &message.get_field(&field))?)?;
    }
    Ok(namespace.bind(py).call((), Some(&fields))?.unbind())
}

fn value_to_py(py: Python<'_>, value: &Value) -> PyResult<Py<PyAny>> {
    Ok(match value {
        Value::Bool(b) => PyBool::new(py, *b).to_owned().into_any().unbind(),
        Value::I32(n) => n.into_pyobject(py)?.into_any().unbind(),
        Value::I64(n) => n.into_pyobject(py)?.into_any().unbind(),
        Value::U32(n) => n.into_pyobject(py)?.into_any().unbind(),
        Value::U64(n) => n.into_pyobject(py)?.into_any().unbind(),
        Value::F32(n) => n.into_pyobject(py)?.into_any().unbind(),
        Value::F64(n) => n.into_pyobject(py)?.into_any().unbind(),
        Value::String(s) => s.into_pyobject(py)?.into_any().unbind(),
        Value::Bytes(b) => PyBytes::new(py, b).into_any().unbind(),
        Value::EnumNumber(n) => n.into_pyobject(py)?.into_any().unbind(),
        Value::Message(m) => message_to_py(py, m)?,
        Value::List(items) => {
            let list = PyList::empty(py);
            for item in items {
                list.append(value_to_py(py, item)?)?;
            }
            list.into_any().unbind()
        }
        Value::Map(map) => {
            let dict = PyDict::new(py);
            for (k, v) in map {
                let key = match k {
                    MapKey::Bool(b) => value_to_py(py, &Value::Bool(*b))?,
                    MapKey::I32(n) => value_to_py(py, &Value::I32(*n))?,
                    MapKey::I64(n) => value_to_py(py, &Value::I64(*n))?,
                    MapKey::U32(n) => value_to_py(py, &Value::U32(*n))?,
                    MapKey::U64(n) => value_to_py(py, &Value::U64(*n))?,
                    MapKey::String(s) => s.into_pyobject(py)?.into_any().unbind(),
                };
                dict.set_item(key, value_to_py(py, v)?)?;
            }
            dict.into_any().unbind()
        }
    })
}
