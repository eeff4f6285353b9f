//! Per-device Modbus configuration: the typed form of a device's `[modbus]` section.
//!
//! The doc comment of every key is the user documentation. Unknown keys are rejected
//! (a typo must not silently fall back to a default). Parsing only checks types;
//! [`ModbusDeviceConfig::validate`] checks everything else and names the offending key,
//! and the driver refuses to start a device whose config does not validate. The pure
//! planner and decoder rely on a validated config but never panic on an invalid one.
//!
//! Addresses are zero-based protocol addresses as they appear on the wire (holding
//! register "40001" in the old 1-based notation is `table = "holding"`, `address = 0`).

use std::collections::HashMap;
use std::net::SocketAddr;

use serde::Deserialize;

/// Largest number of registers one read may ask for (Modbus spec, functions 0x03/0x04).
pub const MAX_REGISTERS_PER_READ: u16 = 125;
/// Largest number of bits one read may ask for (Modbus spec, functions 0x01/0x02).
pub const MAX_BITS_PER_READ: u16 = 2000;
/// Longest accepted point name, in bytes.
pub const MAX_NAME_LEN: usize = 128;

/// One Modbus TCP device to poll.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModbusDeviceConfig {
    /// The device's (or its Modbus TCP gateway's) IP address and port, e.g. `"10.20.0.15:502"`.
    pub address: SocketAddr,
    /// Modbus unit identifier. For a device on its own IP usually `1` (some want `255` or
    /// `0`); behind a Modbus TCP-to-RTU gateway, the serial device's slave address.
    #[serde(default = "default_unit_id")]
    pub unit_id: u8,
    /// How often to read the whole register map, in milliseconds. A poll that takes
    /// longer than this delays the next one instead of queueing up polls.
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// Time allowed for connecting and for each read request, in milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Consecutive failed polls after which the device is reported offline (once). It is
    /// reported online again on the first successful poll.
    #[serde(default = "default_offline_after_failures")]
    pub offline_after_failures: u32,
    /// Interval at which all current values are sent even if none moved beyond its
    /// deadband, in seconds.
    #[serde(default = "default_heartbeat_secs")]
    pub heartbeat_secs: u64,
    /// First wait before reconnecting after the connection failed, in milliseconds. The
    /// wait doubles per failed attempt up to `reconnect_max_ms`, and is jittered so that
    /// many devices behind one switch do not reconnect in lockstep.
    #[serde(default = "default_reconnect_initial_ms")]
    pub reconnect_initial_ms: u64,
    /// Longest wait between reconnect attempts, in milliseconds.
    #[serde(default = "default_reconnect_max_ms")]
    pub reconnect_max_ms: u64,
    /// Most registers asked for in one read (1–125). Lower it for devices that limit their
    /// response size.
    #[serde(default = "default_max_registers_per_read")]
    pub max_registers_per_read: u16,
    /// Most coils or discrete inputs asked for in one read (1–2000).
    #[serde(default = "default_max_bits_per_read")]
    pub max_bits_per_read: u16,
    /// Largest run of unmapped registers (or bits) that may be read and discarded to merge
    /// two reads into one. `0` (the default) merges only adjacent or overlapping points;
    /// raise it only for devices that answer reads of unmapped addresses (many answer
    /// them with "illegal data address").
    #[serde(default)]
    pub max_read_gap: u16,
    /// The points to read.
    pub points: Vec<PointConfig>,
}

/// One named value in the device's register map.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PointConfig {
    /// Name sent upstream as the measurement name, e.g. `"supply_temperature"`. Unique per
    /// device, at most 128 bytes, no control characters.
    pub name: String,
    /// Which table the point lives in: `"holding"` (holding registers, function 0x03),
    /// `"input"` (input registers, 0x04), `"coil"` (coils, 0x01) or `"discrete"`
    /// (discrete inputs, 0x02).
    pub table: Table,
    /// Zero-based address of the point's (first) register or bit.
    pub address: u16,
    /// How the register(s) are interpreted: `"u16"` (default), `"i16"`, `"u32"`, `"i32"` or
    /// `"f32"` (IEEE 754 single). 32-bit types span two registers. Not allowed for coils
    /// and discrete inputs, which read as `0` or `1`.
    #[serde(default)]
    pub data_type: Option<DataType>,
    /// For 32-bit types: `"big"` (default; the register at `address` holds the high word)
    /// or `"little"` (it holds the low word). Bytes within a register are always
    /// big-endian, as Modbus specifies. Not allowed for 16-bit types and bits.
    #[serde(default)]
    pub word_order: Option<WordOrder>,
    /// Multiplier applied to the raw value: value = raw × scale + offset.
    #[serde(default = "default_scale")]
    pub scale: f64,
    /// Added after scaling: value = raw × scale + offset.
    #[serde(default)]
    pub offset: f64,
    /// Units of the scaled value, sent along with it (UCUM where possible, e.g. `"Cel"`).
    #[serde(default)]
    pub units: Option<String>,
    /// Report by exception: the value is sent only when it differs from the last sent
    /// value by more than this (absolute, in scaled units). Without it, any change is
    /// sent. The heartbeat sends it regardless.
    #[serde(default)]
    pub deadband: Option<f64>,
}

/// A Modbus data table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Table {
    /// Holding registers (read with function 0x03).
    Holding,
    /// Input registers (function 0x04).
    Input,
    /// Coils (function 0x01).
    Coil,
    /// Discrete inputs (function 0x02).
    Discrete,
}

impl Table {
    /// True for the two bit tables (coils, discrete inputs).
    #[must_use]
    pub const fn is_bits(self) -> bool {
        matches!(self, Table::Coil | Table::Discrete)
    }

    /// The table's name as spelled in the config.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Table::Holding => "holding",
            Table::Input => "input",
            Table::Coil => "coil",
            Table::Discrete => "discrete",
        }
    }
}

/// How register contents are interpreted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataType {
    /// Unsigned 16-bit, one register.
    #[default]
    U16,
    /// Two's-complement signed 16-bit, one register.
    I16,
    /// Unsigned 32-bit, two registers.
    U32,
    /// Two's-complement signed 32-bit, two registers.
    I32,
    /// IEEE 754 single precision, two registers.
    F32,
}

impl DataType {
    /// Registers the type occupies.
    #[must_use]
    pub const fn registers(self) -> u16 {
        match self {
            DataType::U16 | DataType::I16 => 1,
            DataType::U32 | DataType::I32 | DataType::F32 => 2,
        }
    }

    /// The type's name as spelled in the config.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            DataType::U16 => "u16",
            DataType::I16 => "i16",
            DataType::U32 => "u32",
            DataType::I32 => "i32",
            DataType::F32 => "f32",
        }
    }
}

/// Order of the two registers of a 32-bit value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WordOrder {
    /// High word first (at the lower address): `AB CD`.
    #[default]
    Big,
    /// Low word first: `CD AB`.
    Little,
}

const fn default_unit_id() -> u8 {
    1
}
const fn default_poll_interval_ms() -> u64 {
    1_000
}
const fn default_timeout_ms() -> u64 {
    1_000
}
const fn default_offline_after_failures() -> u32 {
    3
}
const fn default_heartbeat_secs() -> u64 {
    300
}
const fn default_reconnect_initial_ms() -> u64 {
    1_000
}
const fn default_reconnect_max_ms() -> u64 {
    60_000
}
const fn default_max_registers_per_read() -> u16 {
    MAX_REGISTERS_PER_READ
}
const fn default_max_bits_per_read() -> u16 {
    MAX_BITS_PER_READ
}
const fn default_scale() -> f64 {
    1.0
}

impl PointConfig {
    /// Registers (or bits) the point occupies.
    #[must_use]
    pub fn width(&self) -> u16 {
        if self.table.is_bits() {
            1
        } else {
            self.data_type.unwrap_or_default().registers()
        }
    }
}

impl ModbusDeviceConfig {
    /// Checks everything the types do not; the error names the key, e.g.
    /// `points[3].address: f32 at 65535 runs past the register space`.
    pub fn validate(&self) -> Result<(), String> {
        if self.address.port() == 0 {
            return Err("address: port 0 is not a valid device port".into());
        }
        if self.address.ip().is_unspecified() {
            return Err(format!(
                "address: {} is the unspecified address, not a device",
                self.address.ip()
            ));
        }
        if self.poll_interval_ms == 0 {
            return Err("poll_interval_ms: must be at least 1".into());
        }
        if self.timeout_ms == 0 {
            return Err("timeout_ms: must be at least 1".into());
        }
        if self.offline_after_failures == 0 {
            return Err("offline_after_failures: must be at least 1".into());
        }
        if self.heartbeat_secs == 0 {
            return Err("heartbeat_secs: must be at least 1".into());
        }
        if self.reconnect_initial_ms == 0 {
            return Err("reconnect_initial_ms: must be at least 1".into());
        }
        if self.reconnect_max_ms < self.reconnect_initial_ms {
            return Err(format!(
                "reconnect_max_ms: {} is below reconnect_initial_ms ({})",
                self.reconnect_max_ms, self.reconnect_initial_ms
            ));
        }
        // Two registers at least, so that a 32-bit point always fits in one read.
        if !(2..=MAX_REGISTERS_PER_READ).contains(&self.max_registers_per_read) {
            return Err(format!(
                "max_registers_per_read: {} is outside 2..={MAX_REGISTERS_PER_READ}",
                self.max_registers_per_read
            ));
        }
        if !(1..=MAX_BITS_PER_READ).contains(&self.max_bits_per_read) {
            return Err(format!(
                "max_bits_per_read: {} is outside 1..={MAX_BITS_PER_READ}",
                self.max_bits_per_read
            ));
        }
        if self.points.is_empty() {
            return Err("points: at least one point is required".into());
        }
        let mut names: HashMap<&str, usize> = HashMap::with_capacity(self.points.len());
        for (i, point) in self.points.iter().enumerate() {
            point.validate().map_err(|e| format!("points[{i}].{e}"))?;
            if let Some(first) = names.insert(point.name.as_str(), i) {
                return Err(format!(
                    "points[{i}].name: {:?} is already used by points[{first}]",
                    point.name
                ));
            }
        }
        Ok(())
    }
}

impl PointConfig {
    /// Validates one point; the error starts with the key within the point.
    fn validate(&self) -> Result<(), String> {
        if self.name.is_empty() {
            return Err("name: must not be empty".into());
        }
        if self.name.len() > MAX_NAME_LEN {
            return Err(format!("name: longer than {MAX_NAME_LEN} bytes"));
        }
        if self.name.chars().any(char::is_control) {
            return Err("name: contains control characters".into());
        }
        if self.table.is_bits() {
            if self.data_type.is_some() {
                return Err(format!(
                    "data_type: {} points are single bits (0 or 1); remove data_type",
                    self.table.name()
                ));
            }
            if self.word_order.is_some() {
                return Err(format!(
                    "word_order: {} points are single bits; remove word_order",
                    self.table.name()
                ));
            }
        } else {
            let data_type = self.data_type.unwrap_or_default();
            if self.word_order.is_some() && data_type.registers() == 1 {
                return Err(format!(
                    "word_order: only meaningful for 32-bit types, not {}",
                    data_type.name()
                ));
            }
            let last = u32::from(self.address) + u32::from(data_type.registers()) - 1;
            if last > u32::from(u16::MAX) {
                return Err(format!(
                    "address: {} at {} runs past the register space",
                    data_type.name(),
                    self.address
                ));
            }
        }
        if !self.scale.is_finite() || self.scale == 0.0 {
            return Err(format!("scale: {} must be finite and non-zero", self.scale));
        }
        if !self.offset.is_finite() {
            return Err(format!("offset: {} must be finite", self.offset));
        }
        if let Some(units) = &self.units {
            if units.is_empty() || units.chars().any(char::is_control) {
                return Err("units: must be non-empty text without control characters".into());
            }
        }
        if let Some(deadband) = self.deadband {
            if !deadband.is_finite() || deadband < 0.0 {
                return Err(format!("deadband: {deadband} must be a finite number >= 0"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap (house rule).
pub(crate) mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ModbusDeviceConfig, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    pub(crate) fn point(name: &str, table: Table, address: u16) -> PointConfig {
        PointConfig {
            name: name.into(),
            table,
            address,
            data_type: None,
            word_order: None,
            scale: 1.0,
            offset: 0.0,
            units: None,
            deadband: None,
        }
    }

    pub(crate) fn typed(name: &str, address: u16, data_type: DataType) -> PointConfig {
        PointConfig {
            data_type: Some(data_type),
            ..point(name, Table::Holding, address)
        }
    }

    pub(crate) fn device(points: Vec<PointConfig>) -> ModbusDeviceConfig {
        ModbusDeviceConfig {
            address: "127.0.0.1:502".parse().unwrap(),
            unit_id: default_unit_id(),
            poll_interval_ms: default_poll_interval_ms(),
            timeout_ms: default_timeout_ms(),
            offline_after_failures: default_offline_after_failures(),
            heartbeat_secs: default_heartbeat_secs(),
            reconnect_initial_ms: default_reconnect_initial_ms(),
            reconnect_max_ms: default_reconnect_max_ms(),
            max_registers_per_read: default_max_registers_per_read(),
            max_bits_per_read: default_max_bits_per_read(),
            max_read_gap: 0,
            points,
        }
    }

    const EXAMPLE: &str = r#"
        address = "10.20.0.15:502"
        unit_id = 17
        poll_interval_ms = 2000
        heartbeat_secs = 600

        [[points]]
        name = "supply_temperature"
        table = "input"
        address = 0
        data_type = "i16"
        scale = 0.1
        units = "Cel"
        deadband = 0.5

        [[points]]
        name = "energy"
        table = "holding"
        address = 100
        data_type = "f32"
        word_order = "little"
        units = "kW.h"

        [[points]]
        name = "pump_running"
        table = "coil"
        address = 3
    "#;

    #[test]
    fn example_parses_with_defaults_and_validates() {
        let config = parse(EXAMPLE).unwrap();
        config.validate().unwrap();
        assert_eq!(config.unit_id, 17);
        assert_eq!(config.timeout_ms, 1_000);
        assert_eq!(config.offline_after_failures, 3);
        assert_eq!(config.max_registers_per_read, 125);
        assert_eq!(config.points.len(), 3);
        let temperature = &config.points[0];
        assert_eq!(temperature.table, Table::Input);
        assert_eq!(temperature.data_type, Some(DataType::I16));
        assert_eq!(temperature.deadband, Some(0.5));
        assert_eq!(config.points[1].word_order, Some(WordOrder::Little));
        assert_eq!(config.points[1].width(), 2);
        assert_eq!(config.points[2].scale, 1.0);
        assert_eq!(config.points[2].width(), 1);
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = parse(&format!("{EXAMPLE}\npol_interval_ms = 5")).unwrap_err();
        assert!(err.contains("pol_interval_ms"), "{err}");
        let err = parse(&EXAMPLE.replace("deadband = 0.5", "dead_band = 0.5")).unwrap_err();
        assert!(err.contains("dead_band"), "{err}");
        let err = parse(&EXAMPLE.replace("\"little\"", "\"middle\"")).unwrap_err();
        assert!(err.contains("middle"), "{err}");
    }

    fn reason(config: &ModbusDeviceConfig) -> String {
        config.validate().unwrap_err()
    }

    #[test]
    fn validation_names_the_key() {
        let base = device(vec![
            point("a", Table::Holding, 0),
            point("b", Table::Coil, 0),
            typed("c", 65534, DataType::F32),
            typed("d", 65535, DataType::F32),
        ]);
        assert_eq!(
            reason(&base),
            "points[3].address: f32 at 65535 runs past the register space"
        );

        let mut c = device(vec![
            point("a", Table::Holding, 0),
            point("a", Table::Input, 0),
        ]);
        assert_eq!(
            reason(&c),
            "points[1].name: \"a\" is already used by points[0]"
        );
        c.points[1].name = "b".into();
        c.validate().unwrap();

        let ok = device(vec![point("a", Table::Holding, 0)]);
        type Mutation = Box<dyn Fn(&mut ModbusDeviceConfig)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (Box::new(|c| c.poll_interval_ms = 0), "poll_interval_ms:"),
            (Box::new(|c| c.timeout_ms = 0), "timeout_ms:"),
            (Box::new(|c| c.heartbeat_secs = 0), "heartbeat_secs:"),
            (
                Box::new(|c| c.offline_after_failures = 0),
                "offline_after_failures:",
            ),
            (
                Box::new(|c| c.reconnect_initial_ms = 0),
                "reconnect_initial_ms:",
            ),
            (Box::new(|c| c.reconnect_max_ms = 10), "reconnect_max_ms:"),
            (
                Box::new(|c| c.max_registers_per_read = 126),
                "max_registers_per_read:",
            ),
            (
                Box::new(|c| c.max_registers_per_read = 1),
                "max_registers_per_read:",
            ),
            (Box::new(|c| c.max_bits_per_read = 0), "max_bits_per_read:"),
            (
                Box::new(|c| c.max_bits_per_read = 2001),
                "max_bits_per_read:",
            ),
            (Box::new(|c| c.points.clear()), "points:"),
            (Box::new(|c| c.address.set_port(0)), "address:"),
            (
                Box::new(|c| c.address = "0.0.0.0:502".parse().unwrap()),
                "address:",
            ),
            (Box::new(|c| c.points[0].name.clear()), "points[0].name:"),
            (
                Box::new(|c| c.points[0].name = "a\nb".into()),
                "points[0].name:",
            ),
            (
                Box::new(|c| c.points[0].name = "x".repeat(129)),
                "points[0].name:",
            ),
            (Box::new(|c| c.points[0].scale = 0.0), "points[0].scale:"),
            (
                Box::new(|c| c.points[0].scale = f64::NAN),
                "points[0].scale:",
            ),
            (
                Box::new(|c| c.points[0].offset = f64::INFINITY),
                "points[0].offset:",
            ),
            (
                Box::new(|c| c.points[0].deadband = Some(-1.0)),
                "points[0].deadband:",
            ),
            (
                Box::new(|c| c.points[0].deadband = Some(f64::NAN)),
                "points[0].deadband:",
            ),
            (
                Box::new(|c| c.points[0].units = Some(String::new())),
                "points[0].units:",
            ),
            (
                Box::new(|c| c.points[0].word_order = Some(WordOrder::Little)),
                "points[0].word_order:",
            ),
            (
                Box::new(|c| {
                    c.points[0].table = Table::Coil;
                    c.points[0].data_type = Some(DataType::U16);
                }),
                "points[0].data_type:",
            ),
            (
                Box::new(|c| {
                    c.points[0].table = Table::Discrete;
                    c.points[0].word_order = Some(WordOrder::Big);
                }),
                "points[0].word_order:",
            ),
        ];
        for (mutate, key) in cases {
            let mut c = ok.clone();
            mutate(&mut c);
            let err = reason(&c);
            assert!(err.starts_with(key), "expected {key}, got {err}");
        }
        let mut edge = ok.clone();
        edge.points[0].deadband = Some(0.0);
        edge.points[0].data_type = Some(DataType::U32);
        edge.points[0].word_order = Some(WordOrder::Little);
        edge.points[0].address = 65534;
        edge.validate().unwrap();
    }
}
