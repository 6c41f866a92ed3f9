//! JSON for the journal's columns without the `null` fields of structs.
//!
//! Owns: `write`, the one way the journal turns records and events into JSON. A record
//! is mostly unset options (a queued task has about thirty): written as `"field":null`
//! they doubled its size, and with it the pages each commit writes to the WAL and the
//! checkpoint copies again. Leaving them out reads back the same value: serde reads a
//! missing `Option` field as `None` (and SQL's `json_extract` gives NULL for both).
//! Must never: drop anything but a struct field whose value is `None` (a `None` inside
//! a list, a map or a tuple keeps its place), or be used where the JSON is shown to
//! people or other programs (they expect every field).

use serde::ser::{self, Serialize, Serializer};

/// Appends `value` to `buf` as JSON, without the struct fields that are `None`.
pub fn write<T: Serialize + ?Sized>(buf: &mut Vec<u8>, value: &T) -> serde_json::Result<()> {
    let mut json = serde_json::Serializer::new(buf);
    value.serialize(SkipNone(&mut json))
}

/// A serializer that passes everything to the one it wraps, except struct fields that
/// are `None`; every value inside is wrapped again.
struct SkipNone<S>(S);

/// A value whose serialization goes through `SkipNone`.
struct Wrapped<'a, T: ?Sized>(&'a T);

impl<T: Serialize + ?Sized> Serialize for Wrapped<'_, T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(SkipNone(serializer))
    }
}

/// Whether `value` serializes as `None` (the probe stops at the first call).
fn is_none<T: Serialize + ?Sized>(value: &T) -> bool {
    value.serialize(NoneProbe).unwrap_or(false)
}

impl<S: Serializer> Serializer for SkipNone<S> {
    type Ok = S::Ok;
    type Error = S::Error;
    type SerializeSeq = SkipNone<S::SerializeSeq>;
    type SerializeTuple = SkipNone<S::SerializeTuple>;
    type SerializeTupleStruct = SkipNone<S::SerializeTupleStruct>;
    type SerializeTupleVariant = SkipNone<S::SerializeTupleVariant>;
    type SerializeMap = SkipNone<S::SerializeMap>;
    type SerializeStruct = SkipNone<S::SerializeStruct>;
    type SerializeStructVariant = SkipNone<S::SerializeStructVariant>;

    fn serialize_bool(self, v: bool) -> Result<S::Ok, S::Error> {
        self.0.serialize_bool(v)
    }
    fn serialize_i8(self, v: i8) -> Result<S::Ok, S::Error> {
        self.0.serialize_i8(v)
    }
    fn serialize_i16(self, v: i16) -> Result<S::Ok, S::Error> {
        self.0.serialize_i16(v)
    }
    fn serialize_i32(self, v: i32) -> Result<S::Ok, S::Error> {
        self.0.serialize_i32(v)
    }
    fn serialize_i64(self, v: i64) -> Result<S::Ok, S::Error> {
        self.0.serialize_i64(v)
    }
    fn serialize_i128(self, v: i128) -> Result<S::Ok, S::Error> {
        self.0.serialize_i128(v)
    }
    fn serialize_u8(self, v: u8) -> Result<S::Ok, S::Error> {
        self.0.serialize_u8(v)
    }
    fn serialize_u16(self, v: u16) -> Result<S::Ok, S::Error> {
        self.0.serialize_u16(v)
    }
    fn serialize_u32(self, v: u32) -> Result<S::Ok, S::Error> {
        self.0.serialize_u32(v)
    }
    fn serialize_u64(self, v: u64) -> Result<S::Ok, S::Error> {
        self.0.serialize_u64(v)
    }
    fn serialize_u128(self, v: u128) -> Result<S::Ok, S::Error> {
        self.0.serialize_u128(v)
    }
    fn serialize_f32(self, v: f32) -> Result<S::Ok, S::Error> {
        self.0.serialize_f32(v)
    }
    fn serialize_f64(self, v: f64) -> Result<S::Ok, S::Error> {
        self.0.serialize_f64(v)
    }
    fn serialize_char(self, v: char) -> Result<S::Ok, S::Error> {
        self.0.serialize_char(v)
    }
    fn serialize_str(self, v: &str) -> Result<S::Ok, S::Error> {
        self.0.serialize_str(v)
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<S::Ok, S::Error> {
        self.0.serialize_bytes(v)
    }
    fn serialize_none(self) -> Result<S::Ok, S::Error> {
        self.0.serialize_none()
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<S::Ok, S::Error> {
        self.0.serialize_some(&Wrapped(value))
    }
    fn serialize_unit(self) -> Result<S::Ok, S::Error> {
        self.0.serialize_unit()
    }
    fn serialize_unit_struct(self, name: &'static str) -> Result<S::Ok, S::Error> {
        self.0.serialize_unit_struct(name)
    }
    fn serialize_unit_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
    ) -> Result<S::Ok, S::Error> {
        self.0.serialize_unit_variant(name, index, variant)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        value: &T,
    ) -> Result<S::Ok, S::Error> {
        self.0.serialize_newtype_struct(name, &Wrapped(value))
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<S::Ok, S::Error> {
        self.0
            .serialize_newtype_variant(name, index, variant, &Wrapped(value))
    }
    fn serialize_seq(self, len: Option<usize>) -> Result<Self::SerializeSeq, S::Error> {
        self.0.serialize_seq(len).map(SkipNone)
    }
    fn serialize_tuple(self, len: usize) -> Result<Self::SerializeTuple, S::Error> {
        self.0.serialize_tuple(len).map(SkipNone)
    }
    fn serialize_tuple_struct(
        self,
        name: &'static str,
        len: usize,
    ) -> Result<Self::SerializeTupleStruct, S::Error> {
        self.0.serialize_tuple_struct(name, len).map(SkipNone)
    }
    fn serialize_tuple_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeTupleVariant, S::Error> {
        self.0
            .serialize_tuple_variant(name, index, variant, len)
            .map(SkipNone)
    }
    fn serialize_map(self, len: Option<usize>) -> Result<Self::SerializeMap, S::Error> {
        self.0.serialize_map(len).map(SkipNone)
    }
    fn serialize_struct(
        self,
        name: &'static str,
        len: usize,
    ) -> Result<Self::SerializeStruct, S::Error> {
        self.0.serialize_struct(name, len).map(SkipNone)
    }
    fn serialize_struct_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeStructVariant, S::Error> {
        self.0
            .serialize_struct_variant(name, index, variant, len)
            .map(SkipNone)
    }
    fn is_human_readable(&self) -> bool {
        self.0.is_human_readable()
    }
}

/// The compound serializers whose items carry no name: each item is wrapped, so that
/// `None` fields inside it are skipped too.
macro_rules! forward_items {
    ($($trait:ident :: $method:ident),* $(,)?) => {$(
        impl<S: ser::$trait> ser::$trait for SkipNone<S> {
            type Ok = S::Ok;
            type Error = S::Error;
            fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), S::Error> {
                self.0.$method(&Wrapped(value))
            }
            fn end(self) -> Result<S::Ok, S::Error> {
                self.0.end()
            }
        }
    )*};
}

forward_items!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field,
);

impl<S: ser::SerializeMap> ser::SerializeMap for SkipNone<S> {
    type Ok = S::Ok;
    type Error = S::Error;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), S::Error> {
        self.0.serialize_key(&Wrapped(key))
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), S::Error> {
        self.0.serialize_value(&Wrapped(value))
    }
    fn end(self) -> Result<S::Ok, S::Error> {
        self.0.end()
    }
}

/// The compound serializers of named fields: a `None` field is skipped, the others
/// wrapped.
macro_rules! skip_none_fields {
    ($($trait:ident),* $(,)?) => {$(
        impl<S: ser::$trait> ser::$trait for SkipNone<S> {
            type Ok = S::Ok;
            type Error = S::Error;
            fn serialize_field<T: Serialize + ?Sized>(
                &mut self,
                key: &'static str,
                value: &T,
            ) -> Result<(), S::Error> {
                if is_none(value) {
                    return self.0.skip_field(key);
                }
                self.0.serialize_field(key, &Wrapped(value))
            }
            fn skip_field(&mut self, key: &'static str) -> Result<(), S::Error> {
                self.0.skip_field(key)
            }
            fn end(self) -> Result<S::Ok, S::Error> {
                self.0.end()
            }
        }
    )*};
}

skip_none_fields!(SerializeStruct, SerializeStructVariant);

/// Answers "is this `None`?" from the first call a value makes, without serializing it.
struct NoneProbe;

/// The probe met a compound value: not `None`.
#[derive(Debug)]
struct NotNone;

impl std::fmt::Display for NotNone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("not None")
    }
}

impl std::error::Error for NotNone {}

impl ser::Error for NotNone {
    fn custom<T: std::fmt::Display>(_msg: T) -> NotNone {
        NotNone
    }
}

type Never = ser::Impossible<bool, NotNone>;

impl Serializer for NoneProbe {
    type Ok = bool;
    type Error = NotNone;
    type SerializeSeq = Never;
    type SerializeTuple = Never;
    type SerializeTupleStruct = Never;
    type SerializeTupleVariant = Never;
    type SerializeMap = Never;
    type SerializeStruct = Never;
    type SerializeStructVariant = Never;

    fn serialize_none(self) -> Result<bool, NotNone> {
        Ok(true)
    }
    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Result<bool, NotNone> {
        Ok(false)
    }
    fn serialize_bool(self, _: bool) -> Result<bool, NotNone> {
        Ok(false)
    }
    fn serialize_i8(self, _: i8) -> Result<bool, NotNone> {
        Ok(false)
    }
    fn serialize_i16(self, _: i16) -> Result<bool, NotNone> {
        Ok(false)
    }
    fn serialize_i32(self, _: i32) -> Result<bool, NotNone> {
        Ok(false)
    }
    fn serialize_i64(self, _: i64) -> Result<bool, NotNone> {
        Ok(false)
    }
    fn serialize_u8(self, _: u8) -> Result<bool, NotNone> {
        Ok(false)
    }
    fn serialize_u16(self, _: u16) -> Result<bool, NotNone> {
        Ok(false)
    }
    fn serialize_u32(self, _: u32) -> Result<bool, NotNone> {
        Ok(false)
    }
    fn serialize_u64(self, _: u64) -> Result<bool, NotNone> {
        Ok(false)
    }
    fn serialize_f32(self, _: f32) -> Result<bool, NotNone> {
        Ok(false)
    }
    fn serialize_f64(self, _: f64) -> Result<bool, NotNone> {
        Ok(false)
    }
    fn serialize_char(self, _: char) -> Result<bool, NotNone> {
        Ok(false)
    }
    fn serialize_str(self, _: &str) -> Result<bool, NotNone> {
        Ok(false)
    }
    fn serialize_bytes(self, _: &[u8]) -> Result<bool, NotNone> {
        Ok(false)
    }
    fn serialize_unit(self) -> Result<bool, NotNone> {
        Ok(false)
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<bool, NotNone> {
        Ok(false)
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
    ) -> Result<bool, NotNone> {
        Ok(false)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: &T,
    ) -> Result<bool, NotNone> {
        Ok(false)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<bool, NotNone> {
        Ok(false)
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Never, NotNone> {
        Err(NotNone)
    }
    fn serialize_tuple(self, _: usize) -> Result<Never, NotNone> {
        Err(NotNone)
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Never, NotNone> {
        Err(NotNone)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Never, NotNone> {
        Err(NotNone)
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Never, NotNone> {
        Err(NotNone)
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Never, NotNone> {
        Err(NotNone)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Never, NotNone> {
        Err(NotNone)
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    use super::write;
    use crate::model::{TaskEvent, TaskRecord};

    fn compact(value: &impl Serialize) -> String {
        let mut buf = Vec::new();
        write(&mut buf, value).unwrap();
        String::from_utf8(buf).unwrap()
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(tag = "type", rename_all = "camelCase")]
    enum Tagged {
        Step {
            inner: Option<Inner>,
            list: Vec<Option<u8>>,
        },
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Inner {
        gone: Option<String>,
        kept: Option<u8>,
        pair: (Option<u8>, u8),
    }

    #[test]
    fn none_fields_of_structs_are_left_out_and_read_back_as_none() {
        let value = Tagged::Step {
            inner: Some(Inner {
                gone: None,
                kept: Some(0),
                pair: (None, 1),
            }),
            list: vec![None, Some(2)],
        };
        let json = compact(&value);
        assert_eq!(
            json,
            r#"{"type":"step","inner":{"kept":0,"pair":[null,1]},"list":[null,2]}"#
        );
        assert_eq!(serde_json::from_str::<Tagged>(&json).unwrap(), value);
        let empty = Tagged::Step {
            inner: None,
            list: vec![],
        };
        assert_eq!(compact(&empty), r#"{"type":"step","list":[]}"#);
        assert_eq!(
            serde_json::from_str::<Tagged>(&compact(&empty)).unwrap(),
            empty
        );
    }

    #[test]
    fn a_new_task_and_its_submitted_event_round_trip_at_under_half_the_size() {
        let task = TaskRecord {
            id: "task-00000000-0000-4000-8000-000000000000".into(),
            prompt: "Fix the failing test".into(),
            agent: "claude".into(),
            working_directory: "/work".into(),
            ..Default::default()
        };
        let full = serde_json::to_string(&task).unwrap();
        let small = compact(&task);
        assert!(small.len() * 2 < full.len(), "{small} against {full}");
        assert_eq!(serde_json::from_str::<TaskRecord>(&small).unwrap(), task);
        let event = TaskEvent::Submitted {
            task: Box::new(task),
        };
        assert_eq!(
            serde_json::from_str::<TaskEvent>(&compact(&event)).unwrap(),
            event
        );
    }
}
