//! The i8042 keyboard controller at 0x60-0x64, with what Linux's i8042 and atkbd drivers
//! need to bind to it (controller self-test, the configuration byte, keyboard enable and
//! disable, keyboard command acknowledgements): the 0xFE command on port 0x64 resets the CPU
//! (Linux `reboot=k`), and Ctrl-Alt-Del can be injected as key presses (a graceful shutdown
//! request: the guest kernel passes it to init). There is no mouse (aux port).

use std::collections::VecDeque;
use std::sync::Arc;

use vm_superio::{I8042Device, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::BusDevice;
use crate::vstate::{ExitReason, ExitSignal};

/// Offsets from 0x60.
const DATA_OFFSET: u64 = 0;
const COMMAND_OFFSET: u64 = 4;

/// Status register bits.
const STATUS_OUTPUT_FULL: u8 = 0x01;
const STATUS_SYSTEM_FLAG: u8 = 0x04;
const STATUS_LAST_WAS_COMMAND: u8 = 0x08;
/// Set means the keyboard is not inhibited (no key lock).
const STATUS_NOT_INHIBITED: u8 = 0x10;

/// Configuration byte ("command byte") bits.
const CTR_KBD_INTERRUPT: u8 = 0x01;
const CTR_SYSTEM_FLAG: u8 = 0x04;
const CTR_KBD_DISABLED: u8 = 0x10;
const CTR_AUX_DISABLED: u8 = 0x20;
const CTR_TRANSLATE: u8 = 0x40;
/// After power-on: keyboard interrupt on, scan code translation on, no mouse.
const CTR_DEFAULT: u8 = CTR_KBD_INTERRUPT | CTR_SYSTEM_FLAG | CTR_AUX_DISABLED | CTR_TRANSLATE;

/// Controller commands (port 0x64).
const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_AUX_DISABLE: u8 = 0xa7;
const CMD_AUX_ENABLE: u8 = 0xa8;
const CMD_AUX_TEST: u8 = 0xa9;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_TEST: u8 = 0xab;
const CMD_KBD_DISABLE: u8 = 0xad;
const CMD_KBD_ENABLE: u8 = 0xae;
const CMD_READ_OUTPUT_PORT: u8 = 0xd0;
const CMD_WRITE_OUTPUT_PORT: u8 = 0xd1;
const CMD_WRITE_KBD_OUTPUT: u8 = 0xd2;
const CMD_WRITE_AUX_OUTPUT: u8 = 0xd3;
const CMD_WRITE_AUX: u8 = 0xd4;
const CMD_RESET_CPU: u8 = 0xfe;

/// Replies.
const SELF_TEST_OK: u8 = 0x55;
const INTERFACE_TEST_OK: u8 = 0x00;
/// Aux interface test: "clock line stuck low", i.e. no mouse port.
const AUX_TEST_FAILED: u8 = 0x01;
/// Output port: the reset line released and A20 enabled.
const OUTPUT_PORT: u8 = 0x03;

/// Keyboard (device) commands written to port 0x60 and its replies.
const KBD_ECHO: u8 = 0xee;
const KBD_IDENTIFY: u8 = 0xf2;
const KBD_RESET: u8 = 0xff;
const KBD_ACK: u8 = 0xfa;
const KBD_SELF_TEST_PASSED: u8 = 0xaa;
/// Identity of an MF2 keyboard (with translation on, as the driver expects).
const KBD_ID: [u8; 2] = [0xab, 0x41];

/// Ctrl, Alt, Del pressed then released, in scan code set 1 (what the driver sees with the
/// controller's translation on).
const CTRL_ALT_DEL: [u8; 8] = [0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d];

/// Turns the controller's reset line into a clean VM exit.
pub struct ResetTrigger(Arc<ExitSignal>);

impl Trigger for ResetTrigger {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        self.0.request(ExitReason::GuestReset);
        Ok(())
    }
}

/// Who put a byte in the output buffer: replies to controller commands are polled by the
/// driver; keyboard bytes arrive with IRQ 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    Controller,
    Keyboard,
}

/// The i8042 controller; inserted on the port bus at 0x60 with length 5.
pub struct I8042 {
    /// vm-superio's controller, for the reset line.
    reset: I8042Device<ResetTrigger>,
    /// Bytes waiting for the guest on port 0x60.
    output: VecDeque<(u8, Source)>,
    /// The configuration byte.
    ctr: u8,
    /// A command waiting for its parameter on port 0x60.
    pending: Option<u8>,
    /// Whether the last write went to the command port.
    last_was_command: bool,
    /// IRQ 1, raised for each keyboard byte made available.
    kbd_irq: EventFd,
}

impl I8042 {
    pub fn new(exit: Arc<ExitSignal>, kbd_irq: EventFd) -> Self {
        Self {
            reset: I8042Device::new(ResetTrigger(exit)),
            output: VecDeque::new(),
            ctr: CTR_DEFAULT,
            pending: None,
            last_was_command: false,
            kbd_irq,
        }
    }

    /// Queues the Ctrl-Alt-Del key sequence and raises the keyboard interrupt.
    pub fn inject_ctrl_alt_del(&mut self) {
        let was_empty = self.output.is_empty();
        self.output
            .extend(CTRL_ALT_DEL.iter().map(|&b| (b, Source::Keyboard)));
        if was_empty {
            self.raise_kbd_irq();
        }
    }

    fn raise_kbd_irq(&self) {
        if self.ctr & CTR_KBD_INTERRUPT == 0 || self.ctr & CTR_KBD_DISABLED != 0 {
            return;
        }
        if let Err(e) = self.kbd_irq.write(1) {
            tracing::warn!(error = %e, "i8042: cannot raise IRQ 1");
        }
    }

    /// Interrupts for keyboard bytes that waited while the keyboard was off.
    fn kbd_bytes_waiting(&self) {
        if matches!(self.output.front(), Some((_, Source::Keyboard))) {
            self.raise_kbd_irq();
        }
    }

    fn reply(&mut self, byte: u8) {
        self.output.push_back((byte, Source::Controller));
    }

    fn keyboard_bytes(&mut self, bytes: &[u8]) {
        let was_empty = self.output.is_empty();
        self.output
            .extend(bytes.iter().map(|&b| (b, Source::Keyboard)));
        if was_empty {
            self.raise_kbd_irq();
        }
    }

    fn status(&self) -> u8 {
        let mut status = STATUS_SYSTEM_FLAG | STATUS_NOT_INHIBITED;
        if !self.output.is_empty() {
            status |= STATUS_OUTPUT_FULL;
        }
        if self.last_was_command {
            status |= STATUS_LAST_WAS_COMMAND;
        }
        status
    }

    fn read_data(&mut self) -> u8 {
        let byte = self.output.pop_front().map_or(0, |(b, _)| b);
        self.kbd_bytes_waiting();
        byte
    }

    fn command(&mut self, cmd: u8) {
        self.pending = None;
        match cmd {
            CMD_READ_CTR => self.reply(self.ctr),
            CMD_AUX_DISABLE => self.ctr |= CTR_AUX_DISABLED,
            CMD_AUX_ENABLE => self.ctr &= !CTR_AUX_DISABLED,
            CMD_AUX_TEST => self.reply(AUX_TEST_FAILED),
            CMD_SELF_TEST => self.reply(SELF_TEST_OK),
            CMD_KBD_TEST => self.reply(INTERFACE_TEST_OK),
            CMD_KBD_DISABLE => self.ctr |= CTR_KBD_DISABLED,
            CMD_KBD_ENABLE => {
                self.ctr &= !CTR_KBD_DISABLED;
                self.kbd_bytes_waiting();
            }
            CMD_READ_OUTPUT_PORT => self.reply(OUTPUT_PORT),
            CMD_WRITE_CTR
            | CMD_WRITE_OUTPUT_PORT
            | CMD_WRITE_KBD_OUTPUT
            | CMD_WRITE_AUX_OUTPUT
            | CMD_WRITE_AUX => self.pending = Some(cmd),
            CMD_RESET_CPU => {
                let _ = self.reset.write(COMMAND_OFFSET as u8, CMD_RESET_CPU);
            }
            other => tracing::debug!("i8042: ignoring command {other:#04x}"),
        }
    }

    fn write_data(&mut self, value: u8) {
        match self.pending.take() {
            Some(CMD_WRITE_CTR) => {
                self.ctr = value;
                self.kbd_bytes_waiting();
            }
            Some(CMD_WRITE_KBD_OUTPUT) => self.keyboard_bytes(&[value]),
            // No mouse: aux output and aux device writes go nowhere.
            Some(CMD_WRITE_AUX_OUTPUT | CMD_WRITE_AUX | CMD_WRITE_OUTPUT_PORT) => {}
            Some(_) => {}
            None => self.keyboard_command(value),
        }
    }

    /// A byte for the keyboard itself: acknowledged, with the replies an MF2 keyboard gives.
    fn keyboard_command(&mut self, value: u8) {
        match value {
            KBD_ECHO => self.keyboard_bytes(&[KBD_ECHO]),
            KBD_RESET => self.keyboard_bytes(&[KBD_ACK, KBD_SELF_TEST_PASSED]),
            KBD_IDENTIFY => self.keyboard_bytes(&[KBD_ACK, KBD_ID[0], KBD_ID[1]]),
            _ => self.keyboard_bytes(&[KBD_ACK]),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match offset {
            DATA_OFFSET => self.read_data(),
            COMMAND_OFFSET => self.status(),
            _ => 0xff,
        };
        data.fill(value);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let [value] = data else { return };
        match offset {
            DATA_OFFSET => {
                self.last_was_command = false;
                self.write_data(*value);
            }
            COMMAND_OFFSET => {
                self.last_was_command = true;
                self.command(*value);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device() -> (I8042, Arc<ExitSignal>, EventFd) {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        (
            I8042::new(exit.clone(), irq.try_clone().unwrap()),
            exit,
            irq,
        )
    }

    fn status(dev: &mut I8042) -> u8 {
        let mut b = [0u8];
        dev.read(COMMAND_OFFSET, &mut b);
        b[0]
    }

    /// What Linux's `i8042_command` does: the command, its parameters, then polls for the
    /// replies.
    fn command(dev: &mut I8042, cmd: u8, params: &[u8], replies: usize) -> Vec<u8> {
        dev.write(COMMAND_OFFSET, &[cmd]);
        for p in params {
            dev.write(DATA_OFFSET, &[*p]);
        }
        (0..replies)
            .map(|_| {
                assert_ne!(status(dev) & STATUS_OUTPUT_FULL, 0, "no reply to {cmd:#x}");
                let mut b = [0u8];
                dev.read(DATA_OFFSET, &mut b);
                b[0]
            })
            .collect()
    }

    fn drain(dev: &mut I8042) -> Vec<u8> {
        let mut got = Vec::new();
        while status(dev) & STATUS_OUTPUT_FULL != 0 {
            let mut b = [0u8];
            dev.read(DATA_OFFSET, &mut b);
            got.push(b[0]);
        }
        got
    }

    #[test]
    fn reset_command_on_port_0x64_requests_a_clean_exit() {
        let (mut dev, exit, _) = device();
        dev.write(DATA_OFFSET, &[0xfe]);
        dev.write(COMMAND_OFFSET, &[CMD_SELF_TEST]);
        assert!(!exit.is_requested());
        dev.write(COMMAND_OFFSET, &[CMD_RESET_CPU]);
        assert_eq!(exit.reason(), Some(ExitReason::GuestReset));
    }

    #[test]
    fn linux_driver_probe_sees_a_working_controller() {
        let (mut dev, exit, irq) = device();
        // i8042_controller_check: the status register is not 0xff and flushes empty.
        assert_ne!(status(&mut dev), 0xff);
        assert!(drain(&mut dev).is_empty());
        assert_eq!(command(&mut dev, CMD_SELF_TEST, &[], 1), [SELF_TEST_OK]);
        // The configuration byte reads back the same twice, and can be written.
        let ctr = command(&mut dev, CMD_READ_CTR, &[], 1)[0];
        assert_eq!(command(&mut dev, CMD_READ_CTR, &[], 1), [ctr]);
        assert_ne!(ctr & CTR_TRANSLATE, 0, "translation must be on: {ctr:#x}");
        let new = (ctr & !CTR_KBD_DISABLED) | CTR_KBD_INTERRUPT;
        command(&mut dev, CMD_WRITE_CTR, &[new], 0);
        assert_eq!(command(&mut dev, CMD_READ_CTR, &[], 1), [new]);
        assert_eq!(command(&mut dev, CMD_KBD_TEST, &[], 1), [INTERFACE_TEST_OK]);
        assert_eq!(command(&mut dev, CMD_AUX_TEST, &[], 1), [AUX_TEST_FAILED]);
        // Replies to commands are polled, never interrupts.
        assert!(irq.read().is_err(), "no IRQ for controller replies");
        assert!(!exit.is_requested());
    }

    #[test]
    fn keyboard_commands_are_acknowledged_with_an_interrupt() {
        let (mut dev, _, irq) = device();
        dev.write(DATA_OFFSET, &[KBD_RESET]);
        assert_eq!(irq.read().unwrap(), 1);
        assert_eq!(drain(&mut dev), [KBD_ACK, KBD_SELF_TEST_PASSED]);
        dev.write(DATA_OFFSET, &[KBD_IDENTIFY]);
        assert_eq!(drain(&mut dev), [KBD_ACK, KBD_ID[0], KBD_ID[1]]);
        dev.write(DATA_OFFSET, &[0xf4]);
        assert_eq!(drain(&mut dev), [KBD_ACK]);
    }

    #[test]
    fn ctrl_alt_del_is_readable_from_the_data_port() {
        let (mut dev, _, irq) = device();
        dev.inject_ctrl_alt_del();
        assert_eq!(irq.read().unwrap(), 1);
        assert_eq!(drain(&mut dev), CTRL_ALT_DEL);
    }

    #[test]
    fn disabled_keyboard_raises_no_interrupt() {
        let (mut dev, _, irq) = device();
        command(&mut dev, CMD_KBD_DISABLE, &[], 0);
        dev.inject_ctrl_alt_del();
        assert!(irq.read().is_err());
        command(&mut dev, CMD_KBD_ENABLE, &[], 0);
        assert_eq!(
            irq.read().unwrap(),
            1,
            "the waiting keys interrupt once enabled"
        );
        assert_eq!(drain(&mut dev), CTRL_ALT_DEL);
        let ctr = command(&mut dev, CMD_READ_CTR, &[], 1)[0];
        assert_eq!(ctr & CTR_KBD_DISABLED, 0);
    }

    #[test]
    fn stray_parameters_and_unknown_commands_change_nothing() {
        let (mut dev, exit, _) = device();
        dev.write(COMMAND_OFFSET, &[0x77]);
        dev.write(COMMAND_OFFSET, &[CMD_WRITE_AUX]);
        dev.write(DATA_OFFSET, &[0xff]);
        assert!(drain(&mut dev).is_empty());
        assert_eq!(command(&mut dev, CMD_READ_CTR, &[], 1), [CTR_DEFAULT]);
        dev.write(COMMAND_OFFSET, &[0xfe, 0xfe]);
        dev.read(2, &mut [0u8]);
        assert!(!exit.is_requested());
    }
}
