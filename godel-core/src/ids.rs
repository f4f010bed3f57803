//! Identifier newtypes, validated once at the edge so the rest of the code can
//! trust them.

use std::fmt;
use std::str::FromStr;

use uuid::Uuid;

use crate::InvalidInput;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident, $field:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Uuid);

        impl $name {
            /// Wraps an existing UUID.
            pub const fn from_uuid(uuid: Uuid) -> Self {
                Self(uuid)
            }

            /// The underlying UUID.
            pub const fn as_uuid(&self) -> &Uuid {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }

        impl FromStr for $name {
            type Err = InvalidInput;

            fn from_str(s: &str) -> Result<Self, InvalidInput> {
                Uuid::parse_str(s)
                    .map(Self)
                    .map_err(|_| InvalidInput::new($field, format!("expected a UUID, got {s:?}")))
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

uuid_id!(
    /// A task's id: a UUIDv7, so ids sort roughly by creation time.
    TaskId,
    "task id"
);
uuid_id!(
    /// An agent session's id (UUIDv7).
    SessionId,
    "session id"
);
uuid_id!(
    /// The secret that proves a claimer still holds a task's current attempt.
    /// It is random and bound to one (task, attempt); see the store contract.
    LeaseToken,
    "lease token"
);

uuid_id!(
    /// An API key's id (UUIDv7): what lists, revocations and the audit log
    /// name, never the key itself.
    KeyId,
    "key id"
);

impl KeyId {
    /// A fresh, time-ordered id.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }
}

impl Default for KeyId {
    fn default() -> Self {
        Self::new()
    }
}

impl TaskId {
    /// A fresh, time-ordered id.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }
}

impl Default for TaskId {
    fn default() -> Self {
        Self::new()
    }
}

impl SessionId {
    /// A fresh, time-ordered id.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }
}

impl Default for SessionId {
    fn default() -> Self {
        Self::new()
    }
}

impl LeaseToken {
    /// A fresh random token.
    pub fn random() -> Self {
        Self(Uuid::new_v4())
    }
}

macro_rules! name_id {
    ($(#[$doc:meta])* $name:ident, $field:literal, $max:literal, $extra:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// Validates `s`: 1 to
            #[doc = stringify!($max)]
            /// characters from `A-Z a-z 0-9 _ -` and
            #[doc = concat!("`", $extra, "`.")]
            pub fn new(s: impl Into<String>) -> Result<Self, InvalidInput> {
                let s = s.into();
                if s.is_empty() || s.len() > $max {
                    return Err(InvalidInput::new(
                        $field,
                        format!("expected 1 to {} characters, got {}", $max, s.len()),
                    ));
                }
                if let Some(c) = s.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-' || $extra.contains(*c))) {
                    return Err(InvalidInput::new(
                        $field,
                        format!("character {c:?} is not allowed (use A-Z, a-z, 0-9, _, - or {})", $extra),
                    ));
                }
                Ok(Self(s))
            }

            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        impl FromStr for $name {
            type Err = InvalidInput;

            fn from_str(s: &str) -> Result<Self, InvalidInput> {
                Self::new(s)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

name_id!(
    /// The owner of rows. Every store call is scoped by one; see rule 9 of the
    /// store contract.
    TenantId,
    "tenant",
    64,
    "."
);
name_id!(
    /// An agent's id, chosen by whoever registers it (e.g. `local-1`).
    AgentId,
    "agent id",
    128,
    ".:"
);

impl TenantId {
    /// The tenant of the first admin key, and of work an embedding program
    /// submits without naming one.
    pub fn default_tenant() -> Self {
        Self("default".to_owned())
    }
}

impl Default for TenantId {
    fn default() -> Self {
        Self::default_tenant()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        assert!(TenantId::new("acme-prod_2.eu").is_ok());
        assert_eq!(TenantId::new("").unwrap_err().field, "tenant");
        assert!(TenantId::new("a b").is_err());
        assert!(TenantId::new("x".repeat(65)).is_err());
        assert!(AgentId::new("host:local-1").is_ok());
        assert!(AgentId::new("agent/1").is_err());
    }

    #[test]
    fn uuid_ids_round_trip() {
        let id = TaskId::new();
        assert_eq!(id.to_string().parse::<TaskId>().unwrap(), id);
        assert_eq!("nope".parse::<TaskId>().unwrap_err().field, "task id");
    }
}
