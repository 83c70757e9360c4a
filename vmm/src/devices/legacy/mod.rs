//! Legacy PC devices: the 16550 serial port, the i8042 controller (CPU reset only), and a
//! sink for ports Linux pokes without needing an answer (POST code, delay port).
pub mod i8042;
pub mod serial;
pub mod sink;

pub use i8042::I8042;
pub use serial::{EventFdTrigger, SerialDevice, SerialInput};
pub use sink::PortSink;
