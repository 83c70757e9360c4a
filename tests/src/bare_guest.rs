//! The smallest guest a VMM can boot: an ELF64 with a PVH entry note whose code writes one
//! byte to the serial port and resets the machine. Used by the `vmm-floor` benchmark.

/// Where the code is loaded and entered (1 MiB, above the real-mode area).
pub const LOAD_ADDR: u64 = 0x10_0000;

/// The byte the guest writes to COM1.
pub const SERIAL_BYTE: u8 = b'X';

/// 32-bit code entered through PVH (protected mode, paging off):
/// `mov al,'X'; mov dx,0x3f8; out dx,al` (one byte on COM1), then `mov al,0xfe; out 0x64,al`
/// (the i8042 reset our VMM exits on), then `ud2`: with no IDT loaded this triple-faults,
/// which resets machines without an i8042 (QEMU microvm; `-no-reboot` makes it exit).
pub const SERIAL_THEN_RESET: &[u8] = &[
    0xb0,
    SERIAL_BYTE, // mov al, 'X'
    0x66,
    0xba,
    0xf8,
    0x03, // mov dx, 0x3f8
    0xee, // out dx, al
    0xb0,
    0xfe, // mov al, 0xfe
    0xe6,
    0x64, // out 0x64, al
    0x0f,
    0x0b, // ud2
];

const EHDR_SIZE: usize = 64;
const PHDR_SIZE: usize = 56;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
/// XEN_ELFNOTE_PHYS32_ENTRY: the 32-bit PVH entry point.
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

/// An ELF64 executable holding `code` at [`LOAD_ADDR`] and a `Xen` note giving that address
/// as the PVH entry. The note's descriptor is 8 bytes and its segment 4-aligned, like the one
/// Linux emits, so QEMU's loader (which reads a pointer-sized value) and ours both accept it.
pub fn pvh_elf(code: &[u8]) -> Vec<u8> {
    let note_off = EHDR_SIZE + 2 * PHDR_SIZE;
    let mut note = Vec::with_capacity(24);
    note.extend_from_slice(&4u32.to_le_bytes()); // n_namesz
    note.extend_from_slice(&8u32.to_le_bytes()); // n_descsz
    note.extend_from_slice(&XEN_ELFNOTE_PHYS32_ENTRY.to_le_bytes());
    note.extend_from_slice(b"Xen\0");
    note.extend_from_slice(&LOAD_ADDR.to_le_bytes());
    let code_off = (note_off + note.len()).next_multiple_of(16);

    let mut elf = Vec::with_capacity(code_off + code.len());
    elf.extend_from_slice(b"\x7fELF");
    elf.extend_from_slice(&[2, 1, 1, 0]); // ELFCLASS64, little endian, EV_CURRENT, SysV ABI
    elf.extend_from_slice(&[0; 8]);
    elf.extend_from_slice(&2u16.to_le_bytes()); // e_type: ET_EXEC
    elf.extend_from_slice(&62u16.to_le_bytes()); // e_machine: EM_X86_64
    elf.extend_from_slice(&1u32.to_le_bytes()); // e_version
    elf.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // e_entry
    elf.extend_from_slice(&(EHDR_SIZE as u64).to_le_bytes()); // e_phoff
    elf.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    elf.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    elf.extend_from_slice(&(EHDR_SIZE as u16).to_le_bytes()); // e_ehsize
    elf.extend_from_slice(&(PHDR_SIZE as u16).to_le_bytes()); // e_phentsize
    elf.extend_from_slice(&2u16.to_le_bytes()); // e_phnum
    elf.extend_from_slice(&[0; 6]); // e_shentsize, e_shnum, e_shstrndx
    program_header(&mut elf, PT_LOAD, code_off, LOAD_ADDR, code.len(), 16);
    program_header(&mut elf, PT_NOTE, note_off, 0, note.len(), 4);
    elf.extend_from_slice(&note);
    elf.resize(code_off, 0);
    elf.extend_from_slice(code);
    elf
}

fn program_header(elf: &mut Vec<u8>, kind: u32, off: usize, addr: u64, len: usize, align: u64) {
    elf.extend_from_slice(&kind.to_le_bytes());
    elf.extend_from_slice(&7u32.to_le_bytes()); // p_flags: RWX
    elf.extend_from_slice(&(off as u64).to_le_bytes());
    elf.extend_from_slice(&addr.to_le_bytes()); // p_vaddr
    elf.extend_from_slice(&addr.to_le_bytes()); // p_paddr
    elf.extend_from_slice(&(len as u64).to_le_bytes()); // p_filesz
    elf.extend_from_slice(&(len as u64).to_le_bytes()); // p_memsz
    elf.extend_from_slice(&align.to_le_bytes());
}

/// The benchmark's guest: [`SERIAL_THEN_RESET`] as a PVH ELF.
pub fn serial_then_reset_elf() -> Vec<u8> {
    pvh_elf(SERIAL_THEN_RESET)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u16_at(b: &[u8], off: usize) -> u16 {
        u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
    }
    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }
    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    }

    #[test]
    fn load_segment_holds_the_code_at_the_entry() {
        let elf = serial_then_reset_elf();
        assert_eq!(&elf[..4], b"\x7fELF");
        assert_eq!(u64_at(&elf, 24), LOAD_ADDR);
        assert_eq!(u16_at(&elf, 56), 2);
        let ph = EHDR_SIZE;
        assert_eq!(u32_at(&elf, ph), PT_LOAD);
        let off = u64_at(&elf, ph + 8) as usize;
        let len = u64_at(&elf, ph + 32) as usize;
        assert_eq!(u64_at(&elf, ph + 24), LOAD_ADDR);
        assert_eq!(&elf[off..off + len], SERIAL_THEN_RESET);
    }

    #[test]
    fn note_is_a_xen_phys32_entry_with_a_pointer_sized_descriptor() {
        let elf = serial_then_reset_elf();
        let ph = EHDR_SIZE + PHDR_SIZE;
        assert_eq!(u32_at(&elf, ph), PT_NOTE);
        assert_eq!(u64_at(&elf, ph + 48), 4, "note segment alignment");
        let off = u64_at(&elf, ph + 8) as usize;
        assert_eq!(u32_at(&elf, off), 4);
        assert_eq!(u32_at(&elf, off + 4), 8);
        assert_eq!(u32_at(&elf, off + 8), XEN_ELFNOTE_PHYS32_ENTRY);
        assert_eq!(&elf[off + 12..off + 16], b"Xen\0");
        assert_eq!(u64_at(&elf, off + 16), LOAD_ADDR);
    }

    #[test]
    fn code_writes_the_byte_to_com1_then_resets() {
        let code = SERIAL_THEN_RESET;
        assert_eq!(code[..2], [0xb0, SERIAL_BYTE]);
        assert_eq!(code[2..7], [0x66, 0xba, 0xf8, 0x03, 0xee]);
        assert_eq!(code[7..11], [0xb0, 0xfe, 0xe6, 0x64]);
    }
}
