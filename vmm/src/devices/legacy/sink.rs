//! Ports a guest writes for timing or diagnostics only (0x80 POST/delay port, 0xed):
//! writes are dropped and reads return zero, without logging each access.

use crate::devices::BusDevice;

/// A device that accepts and ignores every access.
#[derive(Debug, Default)]
pub struct PortSink;

impl BusDevice for PortSink {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _offset: u64, _data: &[u8]) {}
}
