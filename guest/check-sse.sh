#!/bin/sh
# Fail if the guest ELF contains SSE instructions other than plain moves.
#
# On kvm_pvm every kernel-mode instruction goes through KVM's x86
# instruction emulator, which implements the SSE *moves* (movups, movaps,
# movdqu, movdqa, movq, movd) but not SSE arithmetic/logic: a single
# `xorps xmm0, xmm0` (LLVM's idiom for zeroing 16+ bytes) kills the VM with
# "KVM internal error. Suberror: 1" (emulation failure).
#
# Usage: guest/check-sse.sh [path/to/vlab-guest]
set -eu
elf=${1:-$(dirname "$0")/target/release/vlab-guest}
bad=$(objdump -d --no-show-raw-insn -M intel "$elf" |
    grep -E 'xmm|ymm|mm[0-7]' |
    grep -vE '\s(movups|movaps|movupd|movapd|movdqu|movdqa|movq|movd|movntdq|movntps)\s' || true)
if [ -n "$bad" ]; then
    echo "check-sse: unsupported SSE instructions in $elf:" >&2
    echo "$bad" >&2
    exit 1
fi
echo "check-sse: ok ($elf)"
