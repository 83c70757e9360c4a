//! The ELF vmlinux of a PVH boot: each loadable segment goes into guest memory at its
//! physical address, mapped from the file where it is page-aligned (see
//! [`map_or_copy_file`]), and the entry point comes from the PVH ELF note.
//!
//! Mapping instead of copying means the VMM reads nothing of the kernel at start, the guest
//! pays for the pages it touches only, the alignment padding of the image (megabytes of
//! `int3` on x86_64) never becomes resident, and untouched text is shared with every other
//! VM booted from the same file through the page cache.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::mem::size_of;

use linux_loader::elf::{elf64_hdr, elf64_note, elf64_phdr, PT_LOAD, PT_NOTE};
use vm_memory::{ByteValued, GuestAddress};

use super::layout::HIMEM_START;

// The ELF identification and machine this loader accepts (ELF-64 object file format): the
// linux-loader 0.13 bindings type these inconsistently (u32 indices, a u32 first magic byte).
const ELF_MAGIC: [u8; 4] = *b"\x7fELF";
const EI_CLASS: usize = 4;
const EI_DATA: usize = 5;
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const EM_X86_64: u16 = 62;
use crate::vstate::memory::{map_or_copy_file, FileMapError, GuestMemoryMmap};

/// The note type of the 32-bit PVH entry point, under the name "Xen".
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
/// More program headers or a larger note segment than this is not a kernel.
const MAX_PHDRS: u16 = 64;
const MAX_NOTES: u64 = 64 << 10;

/// Errors of loading the kernel; the caller names the file.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("cannot read it: {0}")]
    Read(#[from] std::io::Error),
    #[error("not an ELF file (--kernel takes the uncompressed vmlinux, not a bzImage)")]
    NotElf,
    #[error("not a 64-bit little-endian x86_64 ELF image")]
    WrongKind,
    #[error("bad program header table: {0}")]
    BadHeaders(&'static str),
    #[error("segment {index}: bytes {offset:#x}+{size:#x} are past the end of the file ({file_len} bytes)")]
    Truncated {
        index: usize,
        offset: u64,
        size: u64,
        file_len: u64,
    },
    #[error("segment {index} at guest {addr:#x} (+{size:#x}) lies below {HIMEM_START:#x} or outside guest memory (raise --memory?)")]
    Outside { index: usize, addr: u64, size: u64 },
    #[error("segment {index}: {source}")]
    Segment { index: usize, source: FileMapError },
    #[error("no PVH entry point (ELF note XEN_ELFNOTE_PHYS32_ENTRY); build the kernel with CONFIG_PVH=y")]
    NoPvhEntry,
}

/// Where the kernel landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadedKernel {
    /// The PVH entry point (32-bit protected mode, paging off).
    pub entry: GuestAddress,
    /// First guest address past the highest segment (bss included).
    pub end: u64,
    /// Bytes mapped from the file, and bytes copied.
    pub mapped: u64,
    pub copied: u64,
}

/// Loads the ELF kernel in `file` into `mem`.
pub fn load_pvh_elf(mem: &GuestMemoryMmap, file: &File) -> Result<LoadedKernel, KernelError> {
    let mut f = file;
    let file_len = file.metadata()?.len();
    let ehdr: elf64_hdr = read_obj(&mut f, 0).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => KernelError::NotElf,
        _ => KernelError::Read(e),
    })?;
    check_header(&ehdr)?;

    let mut phdrs = Vec::with_capacity(ehdr.e_phnum.into());
    for i in 0..u64::from(ehdr.e_phnum) {
        let at = ehdr.e_phoff + i * size_of::<elf64_phdr>() as u64;
        let phdr: elf64_phdr = read_obj(&mut f, at)
            .map_err(|_| KernelError::BadHeaders("past the end of the file"))?;
        phdrs.push(phdr);
    }

    let mut entry = None;
    let (mut end, mut mapped, mut copied) = (0, 0, 0);
    for (index, p) in phdrs.iter().enumerate() {
        let in_file = p
            .p_offset
            .checked_add(p.p_filesz)
            .is_some_and(|e| e <= file_len);
        if (p.p_type == PT_LOAD || p.p_type == PT_NOTE) && !in_file {
            return Err(KernelError::Truncated {
                index,
                offset: p.p_offset,
                size: p.p_filesz,
                file_len,
            });
        }
        match p.p_type {
            PT_NOTE if entry.is_none() => entry = pvh_entry(&mut f, p)?,
            PT_LOAD => {
                let outside = KernelError::Outside {
                    index,
                    addr: p.p_paddr,
                    size: p.p_memsz,
                };
                let seg_end = p.p_paddr.checked_add(p.p_memsz);
                let fits = seg_end.is_some_and(|e| e <= mem_end(mem));
                if p.p_paddr < HIMEM_START || p.p_filesz > p.p_memsz || !fits {
                    return Err(outside);
                }
                let n =
                    map_or_copy_file(mem, GuestAddress(p.p_paddr), file, p.p_offset, p.p_filesz)
                        .map_err(|source| match source {
                            FileMapError::OutOfRange { .. } => outside,
                            source => KernelError::Segment { index, source },
                        })?;
                mapped += n;
                copied += p.p_filesz - n;
                end = end.max(seg_end.unwrap_or(0));
            }
            _ => {}
        }
    }
    Ok(LoadedKernel {
        entry: entry.ok_or(KernelError::NoPvhEntry)?,
        end,
        mapped,
        copied,
    })
}

fn check_header(h: &elf64_hdr) -> Result<(), KernelError> {
    if h.e_ident[..4] != ELF_MAGIC {
        return Err(KernelError::NotElf);
    }
    if h.e_ident[EI_CLASS] != ELFCLASS64
        || h.e_ident[EI_DATA] != ELFDATA2LSB
        || h.e_machine != EM_X86_64
    {
        return Err(KernelError::WrongKind);
    }
    if usize::from(h.e_phentsize) != size_of::<elf64_phdr>() {
        return Err(KernelError::BadHeaders("wrong entry size"));
    }
    if h.e_phnum == 0 || h.e_phnum > MAX_PHDRS {
        return Err(KernelError::BadHeaders("wrong number of entries"));
    }
    if h.e_phoff < size_of::<elf64_hdr>() as u64 {
        return Err(KernelError::BadHeaders("overlaps the ELF header"));
    }
    Ok(())
}

/// The entry point from a note segment, if it holds the PVH note.
fn pvh_entry(f: &mut &File, p: &elf64_phdr) -> Result<Option<GuestAddress>, KernelError> {
    if p.p_filesz > MAX_NOTES {
        return Err(KernelError::BadHeaders("note segment too large"));
    }
    let mut notes = vec![0u8; p.p_filesz as usize];
    f.seek(SeekFrom::Start(p.p_offset))?;
    f.read_exact(&mut notes)?;
    let align4 = |n: u32| (n as usize).next_multiple_of(4);
    let mut at = 0;
    while at + size_of::<elf64_note>() <= notes.len() {
        let hdr = elf64_note::from_slice(&notes[at..at + size_of::<elf64_note>()])
            .copied()
            .unwrap_or_default();
        let name_at = at + size_of::<elf64_note>();
        let desc_at = name_at + align4(hdr.n_namesz);
        let next = desc_at + align4(hdr.n_descsz);
        if next > notes.len() {
            break;
        }
        if hdr.n_type == XEN_ELFNOTE_PHYS32_ENTRY
            && notes[name_at..name_at + hdr.n_namesz as usize] == *b"Xen\0"
            && hdr.n_descsz >= 4
        {
            let desc = [0, 1, 2, 3].map(|i| notes[desc_at + i]);
            return Ok(Some(GuestAddress(u32::from_le_bytes(desc).into())));
        }
        at = next;
    }
    Ok(None)
}

fn read_obj<T: ByteValued + Default>(f: &mut &File, at: u64) -> std::io::Result<T> {
    let mut obj = T::default();
    f.seek(SeekFrom::Start(at))?;
    f.read_exact(obj.as_mut_slice())?;
    Ok(obj)
}

/// First address past the highest guest memory region.
fn mem_end(mem: &GuestMemoryMmap) -> u64 {
    use vm_memory::{Address, GuestMemory, GuestMemoryRegion};
    mem.iter()
        .map(|r| r.last_addr().raw_value() + 1)
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vstate::memory::create_guest_memory;
    use std::io::Write;
    use vm_memory::Bytes;

    const PAGE: usize = 4096;
    const TEXT_AT: u64 = 0x20_0000;
    const DATA_AT: u64 = 0x40_0000;

    /// An ELF with a PVH note, a page-aligned text segment of `text_len` bytes and a data
    /// segment at a file offset that is not page-aligned, 3 bytes long, with 5000 bytes of bss.
    fn kernel_file(text_len: usize, with_note: bool) -> tempfile::NamedTempFile {
        let mut note = Vec::new();
        for v in [4u32, 4, XEN_ELFNOTE_PHYS32_ENTRY] {
            note.extend_from_slice(&v.to_le_bytes());
        }
        note.extend_from_slice(b"Xen\0");
        note.extend_from_slice(&(TEXT_AT as u32 + 0x10).to_le_bytes());
        // A note of another kind first, as a real vmlinux has.
        let mut other = Vec::new();
        for v in [4u32, 8, 1] {
            other.extend_from_slice(&v.to_le_bytes());
        }
        other.extend_from_slice(b"GNU\0");
        other.extend_from_slice(&[9; 8]);
        let notes = [other, if with_note { note } else { Vec::new() }].concat();

        let (notes_off, text_off, data_off) = (0x200usize, PAGE, PAGE + text_len + 7);
        let mut image = vec![0u8; data_off + 3];
        let mut ehdr = elf64_hdr::default();
        ehdr.e_ident[..4].copy_from_slice(&ELF_MAGIC);
        ehdr.e_ident[EI_CLASS] = ELFCLASS64;
        ehdr.e_ident[EI_DATA] = ELFDATA2LSB;
        ehdr.e_machine = EM_X86_64;
        ehdr.e_phoff = size_of::<elf64_hdr>() as u64;
        ehdr.e_phentsize = size_of::<elf64_phdr>() as u16;
        ehdr.e_phnum = 3;
        image[..size_of::<elf64_hdr>()].copy_from_slice(ehdr.as_slice());
        let phdrs = [
            (PT_NOTE, notes_off, 0, notes.len(), notes.len()),
            (PT_LOAD, text_off, TEXT_AT, text_len, text_len),
            (PT_LOAD, data_off, DATA_AT, 3, 5003),
        ];
        for (i, (kind, off, addr, filesz, memsz)) in phdrs.into_iter().enumerate() {
            let p = elf64_phdr {
                p_type: kind,
                p_offset: off as u64,
                p_paddr: addr,
                p_vaddr: addr,
                p_filesz: filesz as u64,
                p_memsz: memsz as u64,
                ..Default::default()
            };
            let at = size_of::<elf64_hdr>() + i * size_of::<elf64_phdr>();
            image[at..at + size_of::<elf64_phdr>()].copy_from_slice(p.as_slice());
        }
        image[notes_off..notes_off + notes.len()].copy_from_slice(&notes);
        for (i, b) in image[text_off..text_off + text_len].iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        image[data_off..data_off + 3].copy_from_slice(b"abc");
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&image).unwrap();
        f
    }

    fn guest_bytes(mem: &GuestMemoryMmap, at: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        mem.read_slice(&mut v, GuestAddress(at)).unwrap();
        v
    }

    #[test]
    fn maps_aligned_segments_copies_the_rest_and_finds_the_pvh_entry() {
        let text_len = 3 * PAGE + 100;
        let f = kernel_file(text_len, true);
        let mem = create_guest_memory(16).unwrap();
        let k = load_pvh_elf(&mem, f.as_file()).unwrap();
        assert_eq!(k.entry, GuestAddress(TEXT_AT + 0x10));
        assert_eq!(k.end, DATA_AT + 5003);
        assert_eq!(
            k.mapped,
            3 * PAGE as u64,
            "whole pages of the text are mapped"
        );
        assert_eq!(k.copied, 100 + 3);
        let text = guest_bytes(&mem, TEXT_AT, text_len + 16);
        for (i, b) in text[..text_len].iter().enumerate() {
            assert_eq!(*b, (i % 251) as u8, "text byte {i}");
        }
        assert_eq!(text[text_len..], [0; 16], "nothing past the segment");
        assert_eq!(guest_bytes(&mem, DATA_AT, 3), b"abc");
        assert_eq!(
            guest_bytes(&mem, DATA_AT + 3, 5000),
            vec![0; 5000],
            "bss is zero"
        );
    }

    #[test]
    fn guest_writes_to_a_mapped_page_do_not_reach_the_file() {
        let f = kernel_file(2 * PAGE, true);
        let before = std::fs::read(f.path()).unwrap();
        let mem = create_guest_memory(16).unwrap();
        let k = load_pvh_elf(&mem, f.as_file()).unwrap();
        assert_eq!(k.mapped, 2 * PAGE as u64);
        mem.write_slice(&[0xaa; 64], GuestAddress(TEXT_AT + 8))
            .unwrap();
        assert_eq!(guest_bytes(&mem, TEXT_AT + 8, 64), vec![0xaa; 64]);
        drop(mem);
        assert_eq!(std::fs::read(f.path()).unwrap(), before);
    }

    #[test]
    fn a_kernel_without_the_pvh_note_is_refused() {
        let f = kernel_file(PAGE, false);
        let mem = create_guest_memory(16).unwrap();
        let e = load_pvh_elf(&mem, f.as_file()).unwrap_err();
        assert!(matches!(e, KernelError::NoPvhEntry), "{e}");
        assert!(e.to_string().contains("CONFIG_PVH=y"), "{e}");
    }

    #[test]
    fn segments_outside_guest_memory_or_past_the_file_are_refused() {
        let f = kernel_file(PAGE, true);
        let mem = create_guest_memory(2).unwrap();
        let e = load_pvh_elf(&mem, f.as_file()).unwrap_err();
        assert!(matches!(e, KernelError::Outside { index: 1, .. }), "{e}");
        assert!(e.to_string().contains("raise --memory"), "{e}");

        let len = f.as_file().metadata().unwrap().len();
        f.as_file().set_len(len - 2).unwrap();
        let mem = create_guest_memory(16).unwrap();
        let e = load_pvh_elf(&mem, f.as_file()).unwrap_err();
        assert!(matches!(e, KernelError::Truncated { index: 2, .. }), "{e}");
    }

    #[test]
    fn files_that_are_not_an_x86_64_elf_are_refused() {
        let mem = create_guest_memory(16).unwrap();
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(b"MZ not an elf").unwrap();
        let e = load_pvh_elf(&mem, f.as_file()).unwrap_err();
        assert!(matches!(e, KernelError::NotElf), "{e}");

        let k = kernel_file(PAGE, true);
        let mut image = std::fs::read(k.path()).unwrap();
        image[18] = 183; // EM_AARCH64
        std::fs::write(k.path(), &image).unwrap();
        let e = load_pvh_elf(&mem, k.as_file()).unwrap_err();
        assert!(matches!(e, KernelError::WrongKind), "{e}");
    }
}
