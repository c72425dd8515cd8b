//! The pinned MessagePack representation shared by every Ferry encoder.
//!
//! Two encoders write Ferry messages: `rmp-serde` on the gateway and the
//! collector, `messagepack-serde` on devices. They disagree by default (maps
//! versus arrays for structs, string versus index for enum variants, `float 32`
//! for lossless `f64`), so no Ferry type relies on serde's derived
//! representation. Instead:
//!
//! - a **struct** is an array of its fields in declaration order
//!   ([`wire_struct!`]); a decoder ignores extra trailing elements, so a newer
//!   sender may append fields (see docs/protocol.md, "Compatibility");
//! - an **enum** is a two-element array `[tag, body]` with an unsigned tag
//!   ([`wire_enum!`]); an unknown tag is an error that names the type and tag;
//! - **integers** take the smallest MessagePack format that holds the value,
//!   non-negative values always as unsigned formats (`rmp`'s rule);
//! - **floats** keep their Rust width: `f32` as `float 32`, `f64` as `float 64`.
//!
//! [`Pinned`] configures `messagepack-serde` for the last two rules;
//! `rmp-serde`'s defaults already follow them. The test vectors in
//! `docs/protocol-vectors.json` hold both encoders to the same bytes.

use messagepack_serde::messagepack_core::{
    Encode,
    encode::{Error, int::EncodeMinimizeInt},
    io::IoWrite,
};
use messagepack_serde::ser::NumEncoder;

/// `messagepack-serde` number encoding that matches `rmp-serde` byte for byte:
/// minimal integers, floats at their own width.
#[derive(Debug, Clone, Copy, Default)]
pub struct Pinned;

macro_rules! minimal_ints {
    ($($fn:ident: $t:ty),*) => {$(
        fn $fn(v: $t, writer: &mut W) -> Result<usize, Error<W::Error>> {
            EncodeMinimizeInt(v).encode(writer)
        }
    )*};
}

impl<W: IoWrite> NumEncoder<W> for Pinned {
    minimal_ints!(
        encode_i8: i8, encode_i16: i16, encode_i32: i32, encode_i64: i64, encode_i128: i128,
        encode_u8: u8, encode_u16: u16, encode_u32: u32, encode_u64: u64, encode_u128: u128
    );

    fn encode_f32(v: f32, writer: &mut W) -> Result<usize, Error<W::Error>> {
        v.encode(writer)
    }

    fn encode_f64(v: f64, writer: &mut W) -> Result<usize, Error<W::Error>> {
        v.encode(writer)
    }
}

/// Counts identifiers; used by the wire macros to size arrays.
#[doc(hidden)]
#[macro_export]
macro_rules! __wire_count {
    () => { 0usize };
    ($head:ident $($tail:ident)*) => { 1usize + $crate::__wire_count!($($tail)*) };
}

/// Declares a struct encoded as a MessagePack array of its fields.
///
/// Decoding names the struct and field that failed (`Batch.blocks: …`), so an
/// error says where in a message the bytes went wrong.
///
/// Fields added by a later revision of the protocol go in an `appended { … }`
/// block after the struct: they are always encoded (after the others, in
/// order), and a decoder that meets an array which ends before them (an
/// older sender) gives them their `Default` value, which must mean "the
/// behaviour of the older revision" (docs/protocol.md, "Compatibility").
#[macro_export]
macro_rules! wire_struct {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[$fmeta:meta])* pub $field:ident : $ty:ty ),* $(,)?
        }
        $(
            appended {
                $( $(#[$ometa:meta])* pub $ofield:ident : $oty:ty ),* $(,)?
            }
        )?
    ) => {
        $(#[$meta])*
        pub struct $name {
            $( $(#[$fmeta])* pub $field: $ty, )*
            $($( $(#[$ometa])* pub $ofield: $oty, )*)?
        }

        impl ::serde::Serialize for $name {
            fn serialize<S: ::serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                use ::serde::ser::SerializeTuple;
                let mut t = s.serialize_tuple(
                    $crate::__wire_count!($($field)*) $( + $crate::__wire_count!($($ofield)*) )?
                )?;
                $( t.serialize_element(&self.$field)?; )*
                $($( t.serialize_element(&self.$ofield)?; )*)?
                t.end()
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> ::serde::de::Visitor<'de> for V {
                    type Value = $name;
                    fn expecting(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                        f.write_str(concat!(
                            "a ", stringify!($name), " array of ",
                            stringify!($($field),*)
                        ))
                    }
                    fn visit_seq<A: ::serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<$name, A::Error> {
                        use ::serde::de::Error as _;
                        $(
                            let $field: $ty = match seq.next_element() {
                                Ok(Some(v)) => v,
                                Ok(None) => return Err(A::Error::custom(format_args!(
                                    "{}: missing field `{}`", stringify!($name), stringify!($field)))),
                                Err(e) => return Err(A::Error::custom(format_args!(
                                    "{}.{}: {}", stringify!($name), stringify!($field), e))),
                            };
                        )*
                        // Appended fields: absent from an older sender's array.
                        #[allow(unused_mut)]
                        let mut ended = false;
                        $($(
                            let $ofield: $oty = if ended {
                                ::core::default::Default::default()
                            } else {
                                match seq.next_element() {
                                    Ok(Some(v)) => v,
                                    Ok(None) => {
                                        ended = true;
                                        ::core::default::Default::default()
                                    }
                                    Err(e) => return Err(A::Error::custom(format_args!(
                                        "{}.{}: {}", stringify!($name), stringify!($ofield), e))),
                                }
                            };
                        )*)?
                        // Forward compatibility: fields appended by newer senders.
                        if !ended {
                            while seq.next_element::<::serde::de::IgnoredAny>()?.is_some() {}
                        }
                        Ok($name { $($field,)* $($($ofield,)*)? })
                    }
                }
                d.deserialize_seq(V)
            }
        }
    };
}

/// Declares an enum encoded as `[tag, body]`, every variant carrying one value.
#[macro_export]
macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $tag:literal => $variant:ident($ty:ty) ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        // Variants are stored inline: devices have no heap to box them in.
        #[allow(clippy::large_enum_variant)]
        pub enum $name {
            $( $(#[$vmeta])* $variant($ty), )*
        }

        impl $name {
            /// The wire tag of this variant.
            pub fn tag(&self) -> u8 {
                match self { $( Self::$variant(_) => $tag, )* }
            }
        }

        impl ::serde::Serialize for $name {
            fn serialize<S: ::serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                use ::serde::ser::SerializeTuple;
                let mut t = s.serialize_tuple(2)?;
                match self {
                    $( Self::$variant(v) => { t.serialize_element(&($tag as u8))?; t.serialize_element(v)?; } )*
                }
                t.end()
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> ::serde::de::Visitor<'de> for V {
                    type Value = $name;
                    fn expecting(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                        f.write_str(concat!("a ", stringify!($name), " as [tag, body]"))
                    }
                    fn visit_seq<A: ::serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<$name, A::Error> {
                        use ::serde::de::Error as _;
                        let tag: u8 = match seq.next_element() {
                            Ok(Some(t)) => t,
                            Ok(None) => return Err(A::Error::custom(concat!(stringify!($name), ": missing tag"))),
                            Err(e) => return Err(A::Error::custom(format_args!("{} tag: {}", stringify!($name), e))),
                        };
                        let value = match tag {
                            $( $tag => match seq.next_element::<$ty>() {
                                Ok(Some(v)) => $name::$variant(v),
                                Ok(None) => return Err(A::Error::custom(concat!(
                                    stringify!($name), "::", stringify!($variant), ": missing body"))),
                                Err(e) => return Err(A::Error::custom(format_args!(
                                    "{}::{}: {}", stringify!($name), stringify!($variant), e))),
                            }, )*
                            other => return Err(A::Error::custom(format_args!(
                                "{}: unknown tag {}", stringify!($name), other))),
                        };
                        while seq.next_element::<::serde::de::IgnoredAny>()?.is_some() {}
                        Ok(value)
                    }
                }
                d.deserialize_seq(V)
            }
        }
    };
}
