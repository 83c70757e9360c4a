# Bare test guest, entered through PVH: 32-bit protected mode, flat segments,
# paging off, EBX = hvm_start_info. The first byte of the kernel command line
# selects the scenario.
.code32
.globl _start
_start:
    mov $0x90000, %esp              # PVH gives no stack
    mov $0x3f8, %dx
    cmpl $0x336ec578, (%ebx)        # hvm_start_info.magic
    jne fail
    mov 24(%ebx), %edi              # cmdline_paddr
    movzbl (%edi), %eax
    cmp $'h', %al
    je hello
    cmp $'m', %al
    je mmio
    cmp $'t', %al
    je triple
    cmp $'s', %al
    je smp
    cmp $'w', %al
    je wait
    cmp $'d', %al
    je dots
    cmp $'e', %al
    je echo
    cmp $'p', %al
    je pmem
    jmp fail

hello:
    mov $msg_hello, %esi
    call print
    mov %edi, %esi                  # echo the command line
    call print
    mov $msg_nl, %esi
    call print
    jmp reset

mmio:
    movl $0x12345678, 0xe0000000
    mov 0xe0000000, %eax
    cmp $0xffffffff, %eax
    jne fail
    mov $msg_mmio, %esi
    call print
    jmp reset

triple:
    ud2

smp:
    movzbl 1(%edi), %ecx            # expected vCPUs, '1'..'9'
    sub $'1', %ecx                  # expected APs
    movl $0, 0x9000
    mov $ap_start, %esi
    mov $0x8000, %edi
    push %ecx
    mov $(ap_end - ap_start), %ecx
    rep movsb
    pop %ecx
    movl $0, 0xfee00310
    movl $0x000c4500, 0xfee00300    # INIT, all excluding self
    movl $0x000c4608, 0xfee00300    # SIPI, vector 0x08 -> 0x8000
    mov $0x40000000, %ebx           # spin limit
1:  cmp %ecx, 0x9000
    je 2f
    pause
    dec %ebx
    jnz 1b
2:  mov $msg_cpus, %esi
    call print
    mov 0x9000, %eax
    add $'1', %al
    mov $0x3f8, %dx
    out %al, %dx
    mov $msg_nl, %esi
    call print
    jmp reset

wait:
    mov $msg_wait, %esi
    call print
1:  pause
    jmp 1b

dots:
    mov $'.', %al
    out %al, %dx
    mov $1000, %ecx
1:  pause
    loop 1b
    jmp dots

echo:                               # echo serial input until 'q'
    mov $0x3fd, %dx                 # line status register
1:  in %dx, %al
    test $1, %al                    # data ready
    jz 1b
    mov $0x3f8, %dx
    in %dx, %al
    out %al, %dx
    cmp $'q', %al
    jne echo
    jmp reset

pmem:                               # the first pmem region, at 4 GiB, through long-mode
    movl $0xb003, 0xa000            # paging (this host's KVM takes no 32-bit paging):
    movl $0xc003, 0xb000            # PML4[0] -> PDPT at 0xb000, PDPT[0] -> PD at 0xc000,
    movl $0xd003, 0xb008            # PDPT[1] -> PD at 0xd000
    movl $0x83, 0xc000              # 2 MiB page at 0: this code and its data, identity
    movl $0x83, 0xd000              # 2 MiB page at 4 GiB, seen at 1 GiB
    movl $1, 0xd004
    mov $0xa000, %eax
    mov %eax, %cr3
    mov %cr4, %eax
    or $0x20, %eax                  # PAE
    mov %eax, %cr4
    mov $0xc0000080, %ecx           # EFER.LME
    rdmsr
    or $0x100, %eax
    wrmsr
    mov %cr0, %eax
    or $0x80000000, %eax            # PG: compatibility mode, this code stays 32-bit
    mov %eax, %cr0
    mov $0x3f8, %dx
    mov $0x40000000, %esi           # the region's text up to its first NUL
    call print
    mov $msg_nl, %esi
    call print
    movb $'X', 0x40000000           # a write: dropped or private on a read-only region
    mov $0x40000000, %esi
    call print
    mov $msg_nl, %esi
    call print
    jmp reset

fail:
    mov $msg_fail, %esi
    call print
reset:
    mov $0xfe, %al
    out %al, $0x64
1:  hlt
    jmp 1b

print:
    lodsb
    test %al, %al
    jz 1f
    out %al, %dx
    jmp print
1:  ret

.code16
ap_start:
    xor %ax, %ax
    mov %ax, %ds
    lock incl 0x9000
    cli
1:  hlt
    jmp 1b
ap_end:

msg_hello: .asciz "hello from the guest, cmdline: "
msg_nl:    .asciz "\n"
msg_mmio:  .asciz "MMIO-OK\n"
msg_cpus:  .asciz "CPUS="
msg_wait:  .asciz "WAITING\n"
msg_fail:  .asciz "FAIL\n"
