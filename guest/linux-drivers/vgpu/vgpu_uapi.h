/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * vgpu_uapi.h - the user-space ABI of the vgpu Linux driver (/dev/vgpuN).
 *
 * vgpu is vlab's teaching GPU; its datasheet is docs/devices/vgpu.md. This
 * header is shared by the kernel driver (vgpu.c) and user programs
 * (vgpu-demo.c), so it uses only fixed-size types from <linux/types.h>
 * and every structure is a multiple of 8 bytes with no implicit padding:
 * the layout is identical for 32-bit and 64-bit user space (the driver sets
 * .compat_ioctl = compat_ptr_ioctl).
 *
 * The model, in four calls:
 *
 *   VGPU_IOC_INFO        what the device and the driver can do, and the
 *                        current mode;
 *   VGPU_IOC_SET_MODE    choose the visible framebuffer (waits until the
 *                        engine is idle, as the datasheet requires);
 *   VGPU_IOC_SUBMIT      hand the engine a command buffer (datasheet §6) and
 *                        get back a fence number;
 *   VGPU_IOC_WAIT_FENCE  sleep until that command buffer has executed (or
 *                        failed, or the timeout expired);
 *
 * plus mmap(): offset 0 of /dev/vgpuN is the framebuffer (BAR2), mapped
 * write-combining. It must be MAP_SHARED. Pixel (x, y) is the 32-bit word at
 * byte y * stride + x * 4, 0x00RRGGBB; always use the stride SET_MODE and
 * INFO report, never width * 4.
 */
#ifndef _UAPI_VGPU_H
#define _UAPI_VGPU_H

#include <linux/ioctl.h>
#include <linux/types.h>

/* ---- Command encoding (datasheet §6), for building command buffers ---- */

#define VGPU_OP_NOP		0x00
#define VGPU_OP_FILL_RECT	0x01	/* x, y, w, h, color */
#define VGPU_OP_COPY_RECT	0x02	/* src_x, src_y, dst_x, dst_y, w, h */
#define VGPU_OP_UPLOAD_IMAGE	0x03	/* x, y, w, h, src_lo, src_hi, src_stride */
#define VGPU_OP_FENCE		0x04	/* value: reserved to the driver, see below */

/* Header dword: opcode in bits 7:0, length in dwords (header included) in 31:16. */
#define VGPU_CMD_HEADER(op, dwords)	((__u32)(((dwords) << 16) | (op)))

#define VGPU_FILL_RECT_DWORDS		6
#define VGPU_COPY_RECT_DWORDS		7
#define VGPU_UPLOAD_IMAGE_DWORDS	8
#define VGPU_FENCE_DWORDS		2

/* The only pixel format. */
#define VGPU_FORMAT_XRGB8888	1

/* ---- Limits ---------------------------------------------------------- */

/*
 * A submission is a command buffer of at most VGPU_MAX_CMD_BYTES (a multiple
 * of 4) plus an optional data blob of at most VGPU_MAX_DATA_BYTES holding
 * UPLOAD_IMAGE source pixels. (The device accepts 64 KiB per descriptor; the
 * driver keeps 8 bytes to append its own FENCE.)
 */
#define VGPU_MAX_CMD_BYTES	(65536 - 8)
#define VGPU_MAX_DATA_BYTES	(192 * 1024)

/* ---- VGPU_IOC_INFO ---------------------------------------------------- */

struct vgpu_info {
	__u32 version;		/* VERSION register: major << 16 | minor */
	__u32 fb_size;		/* bytes of framebuffer that mmap() can map */
	__u32 max_width;	/* largest mode */
	__u32 max_height;
	__u32 width;		/* current mode; all 0 if no mode is set */
	__u32 height;
	__u32 stride;		/* bytes per framebuffer row */
	__u32 format;		/* VGPU_FORMAT_XRGB8888 or 0 */
	__u32 ring_size;	/* descriptors in the driver's ring */
	__u32 max_cmd_bytes;	/* VGPU_MAX_CMD_BYTES */
	__u32 max_data_bytes;	/* VGPU_MAX_DATA_BYTES */
	__u32 last_submitted;	/* newest fence handed out (0: none yet) */
	__u32 last_retired;	/* newest fence whose buffer executed or failed */
	__u32 errors;		/* device errors the driver handled since probe */
	__u32 irq_is_msi;	/* 1: MSI, 0: legacy INTx */
	__u32 reserved;		/* 0 */
};

/* ---- VGPU_IOC_SET_MODE ------------------------------------------------ */

/* flags */
#define VGPU_MODE_CLEAR		(1u << 0)	/* also clear the visible area to black */

struct vgpu_mode {
	__u32 width;		/* in: 1..max_width */
	__u32 height;		/* in: 1..max_height */
	__u32 format;		/* in: VGPU_FORMAT_XRGB8888 */
	__u32 flags;		/* in: VGPU_MODE_* */
	__u32 stride;		/* out: MODE_STRIDE, bytes per row */
	__u32 reserved;		/* in: 0 */
};

/* ---- VGPU_IOC_SUBMIT -------------------------------------------------- */

/*
 * cmds points at cmd_len bytes of little-endian command dwords (datasheet
 * §6). The driver copies them (and the data blob) into a DMA buffer of its
 * own, checks the buffer's structure (known opcodes, exact lengths, no
 * reserved header bits, nothing truncated), appends a FENCE and queues it.
 *
 *  - FENCE commands are not allowed: the driver owns the fence sequence and
 *    returns the buffer's fence number in .fence.
 *  - UPLOAD_IMAGE's 64-bit source address is a *byte offset into the data
 *    blob*, not an address: the driver checks that the whole source span,
 *    (h - 1) * src_stride + w * 4 bytes, lies inside the blob and rewrites
 *    it to the blob's DMA address. User space never sees bus addresses.
 *  - Drawing semantics (is a mode set, are the rectangles on screen, is the
 *    stride large enough) are checked by the device, not the driver: such a
 *    buffer is accepted here and fails at execution; VGPU_IOC_WAIT_FENCE then
 *    returns -EIO with the device's error code.
 *
 * Blocks (interruptibly) while the ring is full. Errors: EINVAL (bad
 * buffer or flags), EFAULT, ETIMEDOUT (ring full for 5 s: the engine is
 * stuck), EINTR/ERESTARTSYS, ENODEV (device removed).
 */
struct vgpu_submit {
	__u64 cmds;		/* in: user pointer to the command dwords */
	__u64 data;		/* in: user pointer to the data blob (or 0) */
	__u32 cmd_len;		/* in: bytes, multiple of 4, 4..VGPU_MAX_CMD_BYTES */
	__u32 data_len;		/* in: bytes, 0..VGPU_MAX_DATA_BYTES */
	__u32 flags;		/* in: 0 */
	__u32 fence;		/* out: fence number of this buffer (never 0) */
};

/* ---- VGPU_IOC_WAIT_FENCE ---------------------------------------------- */

/*
 * Waits until the buffer with fence number .fence has left the engine.
 * Returns 0 if it executed completely. Returns -1/EIO if the device rejected
 * it (nothing of a buffer that fails validation is drawn) or faulted while
 * executing it; .error_code is then the device's ERROR_CODE (datasheet §8)
 * and .error_offset the byte offset of the faulting command in the buffer
 * (0xffffffff if the error was not at a command). Other errors: ETIMEDOUT
 * (timeout_ms passed; 0 means just poll), EINTR/ERESTARTSYS, EINVAL (fence
 * never handed out), ESTALE (fence so old that its outcome is forgotten:
 * more than 1024 submissions ago), ENODEV (device removed).
 */
struct vgpu_wait {
	__u32 fence;		/* in */
	__u32 timeout_ms;	/* in: 0 = do not sleep */
	__u32 error_code;	/* out: 0, or ERROR_CODE if the buffer failed */
	__u32 error_offset;	/* out: faulting command's offset, if any */
};

/* ---- ioctl numbers ---------------------------------------------------- */

#define VGPU_IOC_MAGIC	0xB5	/* after vlab's vendor ID 0x7AB5 */

#define VGPU_IOC_INFO		_IOR(VGPU_IOC_MAGIC, 0x00, struct vgpu_info)
#define VGPU_IOC_SET_MODE	_IOWR(VGPU_IOC_MAGIC, 0x01, struct vgpu_mode)
#define VGPU_IOC_SUBMIT		_IOWR(VGPU_IOC_MAGIC, 0x02, struct vgpu_submit)
#define VGPU_IOC_WAIT_FENCE	_IOWR(VGPU_IOC_MAGIC, 0x03, struct vgpu_wait)

#endif /* _UAPI_VGPU_H */
