// SPDX-License-Identifier: GPL-2.0
/*
 * vgpu.c - Linux driver for vgpu, the teaching GPU of vlab.
 *
 * This is the reference driver for docs/devices/vgpu.md (the datasheet; the
 * "§" numbers below point into it). It is written to be read: every
 * datasheet rule a correct driver follows (§10) is marked "rule N" where the
 * driver follows it, and every lock says what it protects.
 *
 * What the driver does
 * --------------------
 *  - probe: enable the PCI function, map BAR0 (registers) and BAR2
 *    (framebuffer, write-combining), check ID/VERSION, reset the device,
 *    allocate a ring of descriptors and one command buffer per ring entry in
 *    DMA-coherent memory, enable the ring, get an interrupt (MSI, else
 *    shared INTx), unmask interrupts, and create /dev/vgpuN.
 *  - /dev/vgpuN: ioctls (vgpu_uapi.h) to read device info, set the mode,
 *    submit a command buffer (copied from user space into a driver-owned DMA
 *    buffer, checked, given a FENCE, queued on the ring) and wait for its
 *    fence; mmap() of the framebuffer.
 *  - interrupt: acknowledge, then retire the descriptors the engine has
 *    finished (RING_HEAD), and recover from engine errors (the faulting
 *    buffer fails with -EIO; the rest continue).
 *  - remove: stop user space, drain or reset the engine, free everything.
 *
 * Concurrency (the part students found hard)
 * -----------------------------------------
 * Three kinds of context touch the device at the same time, possibly on
 * different CPUs:
 *
 *   1. ioctl callers (any number of processes and threads);
 *   2. the interrupt handler (hard IRQ context: must not sleep);
 *   3. remove() (the device is unbound while files are still open).
 *
 * Three locks and one reference count make this safe:
 *
 *   submit_lock (mutex, may sleep): serialises everything that *writes* the
 *     ring or the mode: SUBMIT, SET_MODE, INFO and remove(). Only its holder
 *     fills ring entries and writes RING_TAIL/DOORBELL, so there is exactly
 *     one producer. It may be held while sleeping (copy_from_user, waiting
 *     for ring space).
 *
 *   lock (spinlock, IRQ-safe): protects the state shared with the interrupt
 *     handler: the driver's head/tail indices, per-entry bookkeeping, the
 *     fence history and the "dead" flag. The handler takes it with
 *     spin_lock() (interrupts are already off in a hard IRQ handler); process
 *     context takes it with spin_lock_irq()/spin_lock_irqsave() so the
 *     handler can never interrupt a holder on the same CPU and deadlock.
 *     Waiters sleep on wq and re-check their condition under this lock.
 *
 *   ref (kref): the vgpu_device outlives remove() while any file (or an
 *     mmap(), which keeps its file alive) is still open. After remove() the
 *     hardware is gone: every path checks ->dead first and returns -ENODEV,
 *     and user mappings of the framebuffer have been zapped.
 *
 *   files_lock (mutex): the list of open files and, for the framebuffer
 *     fault handler, the "dead" check; remove() holds it while zapping user
 *     mappings.
 *
 * Lock order: submit_lock -> mmap_lock (copy_from_user() may fault while
 * SUBMIT holds submit_lock) -> files_lock (the page-fault handler runs with
 * mmap_lock held) ; submit_lock -> lock. So the fault handler must never
 * take submit_lock: that would be the ABBA pattern mmap_lock -> submit_lock
 * against SUBMIT's submit_lock -> mmap_lock. That is why the framebuffer
 * path has its own files_lock.
 */

#include <linux/device.h>
#include <linux/dma-mapping.h>
#include <linux/fs.h>
#include <linux/idr.h>
#include <linux/interrupt.h>
#include <linux/io.h>
#include <linux/kernel.h>
#include <linux/kref.h>
#include <linux/miscdevice.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/overflow.h>
#include <linux/pci.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/uaccess.h>
#include <linux/wait.h>
#include <linux/workqueue.h>

#include "vgpu_uapi.h"

/* ---- The hardware (datasheet §1, §3) ------------------------------------ */

#define VGPU_VENDOR_ID		0x7ab5
#define VGPU_DEVICE_ID		0x0001
#define VGPU_ID_VALUE		((VGPU_DEVICE_ID << 16) | VGPU_VENDOR_ID)
#define VGPU_VERSION_MAJOR	1

#define VGPU_REG_BAR		0
#define VGPU_FB_BAR		2
#define VGPU_REG_BAR_SIZE	0x1000

#define VGPU_REG_ID		0x000
#define VGPU_REG_VERSION	0x004
#define VGPU_REG_FB_SIZE	0x008
#define VGPU_REG_MAX_SIZE	0x00c
#define VGPU_REG_STATUS		0x010
#define VGPU_REG_CONTROL	0x014
#define VGPU_REG_INT_STATUS	0x018
#define VGPU_REG_INT_MASK	0x01c
#define VGPU_REG_ERROR_CODE	0x020
#define VGPU_REG_ERROR_ADDR_LO	0x024
#define VGPU_REG_ERROR_ADDR_HI	0x028
#define VGPU_REG_ERROR_COUNT	0x02c
#define VGPU_REG_MODE_WIDTH	0x030
#define VGPU_REG_MODE_HEIGHT	0x034
#define VGPU_REG_MODE_FORMAT	0x038
#define VGPU_REG_MODE_STRIDE	0x03c
#define VGPU_REG_RING_BASE_LO	0x040
#define VGPU_REG_RING_BASE_HI	0x044
#define VGPU_REG_RING_SIZE	0x048
#define VGPU_REG_RING_HEAD	0x04c
#define VGPU_REG_RING_TAIL	0x050
#define VGPU_REG_DOORBELL	0x054
#define VGPU_REG_FENCE_COMPLETED 0x058
#define VGPU_REG_SCRATCH	0x05c

#define VGPU_STATUS_ENABLED	BIT(0)
#define VGPU_STATUS_ENGINE_BUSY	BIT(1)
#define VGPU_STATUS_RING_EMPTY	BIT(2)
#define VGPU_STATUS_ERROR	BIT(3)
#define VGPU_STATUS_MODE_SET	BIT(4)
#define VGPU_STATUS_BUS_MASTER	BIT(5)

#define VGPU_CONTROL_ENABLE	BIT(0)
#define VGPU_CONTROL_RESET	BIT(1)
#define VGPU_CONTROL_CLEAR_ERROR BIT(2)

#define VGPU_INT_FENCE		BIT(0)
#define VGPU_INT_ERROR		BIT(1)
#define VGPU_INT_IDLE		BIT(2)
#define VGPU_INT_VALID		(VGPU_INT_FENCE | VGPU_INT_ERROR | VGPU_INT_IDLE)

#define VGPU_CMD_RESERVED	0x0000ff00	/* header bits 15:8 */
#define VGPU_DESC_MAX_LEN	65536		/* bytes per descriptor */

/* ERROR_CODE values (§8) the driver treats specially or names in logs. */
#define VGPU_ERR_RESERVED_BITS	0x05
#define VGPU_ERR_BAD_RING	0x07
#define VGPU_ERR_NO_BUS_MASTER	0x10
#define VGPU_ERR_FIRST_ENGINE	0x10

/* One ring descriptor (§5): 16 bytes, little-endian, in coherent memory. */
struct vgpu_desc {
	__le64 buffer_addr;
	__le32 length;
	__le32 flags;
};
static_assert(sizeof(struct vgpu_desc) == 16);

/* ---- The driver's choices ----------------------------------------------- */

/*
 * Ring of 8 descriptors: up to 7 command buffers in flight (rule 9 keeps
 * one entry empty). Each ring entry owns one DMA buffer: the command buffer
 * (up to 64 KiB, the descriptor limit) followed by the UPLOAD_IMAGE data
 * blob. Tying buffers to ring entries makes buffer lifetime trivially
 * correct (rules 7 and 10): a buffer is reused only when its ring entry is,
 * i.e. after RING_HEAD has passed it.
 */
#define VGPU_RING_SIZE		8
#define VGPU_RING_MASK		(VGPU_RING_SIZE - 1)
#define VGPU_DATA_OFFSET	VGPU_DESC_MAX_LEN
#define VGPU_BUF_SIZE		(VGPU_DATA_OFFSET + VGPU_MAX_DATA_BYTES)
static_assert(VGPU_MAX_CMD_BYTES + 4 * VGPU_FENCE_DWORDS <= VGPU_DESC_MAX_LEN);
static_assert((VGPU_RING_SIZE & (VGPU_RING_SIZE - 1)) == 0 && VGPU_RING_SIZE >= 2);

/* The outcome of the last VGPU_HISTORY fences, indexed by fence % size. */
#define VGPU_HISTORY		1024

/* How long SUBMIT waits for ring space and SET_MODE/remove for idle. */
#define VGPU_STALL_TIMEOUT	(5 * HZ)

/* The interrupt causes the driver enables (rule 11). */
#define VGPU_INT_ENABLED	(VGPU_INT_FENCE | VGPU_INT_ERROR | VGPU_INT_IDLE)

enum vgpu_fence_state {
	VGPU_FENCE_PENDING,
	VGPU_FENCE_DONE,
	VGPU_FENCE_FAILED,
};

struct vgpu_fence_rec {
	u32 seq;		/* which fence this record is about */
	u32 state;		/* enum vgpu_fence_state */
	u32 error_code;		/* ERROR_CODE if FAILED */
	u32 error_offset;	/* offset of the faulting command, or U32_MAX */
};

/* One ring entry and the DMA buffer it owns. */
struct vgpu_slot {
	void *cpu;		/* kernel address of the buffer */
	dma_addr_t dma;		/* its bus address, given to the device */
	/* Protected by vgpu_device.lock: */
	u32 seq;		/* fence of the buffer queued here */
	u32 len;		/* descriptor length (commands + FENCE) */
	u32 error_code;		/* set by the IRQ handler when the device fails it */
	u32 error_offset;
};

struct vgpu_device {
	struct kref ref;
	struct pci_dev *pdev;

	void __iomem *regs;		/* BAR0 */
	void __iomem *fb;		/* BAR2, write-combining */
	phys_addr_t fb_phys;
	u32 fb_len;
	u32 max_width, max_height;

	int irq;
	bool msi;

	int id;
	char name[16];			/* "vgpuN": /dev node and /proc/interrupts */
	struct miscdevice misc;

	struct vgpu_desc *ring;		/* VGPU_RING_SIZE descriptors, coherent */
	dma_addr_t ring_dma;
	struct vgpu_slot slots[VGPU_RING_SIZE];

	/* Serialises ring producers, mode changes and remove(); see top. */
	struct mutex submit_lock;

	/* Shared with the interrupt handler; see top. */
	spinlock_t lock;
	u32 head;			/* oldest entry not yet retired */
	u32 tail;			/* next entry to fill (== RING_TAIL) */
	u32 last_seq;			/* newest fence handed out */
	u32 retired_seq;		/* newest fence retired */
	u32 errors;			/* device errors handled */
	bool dead;			/* remove() ran: touch no hardware */
	struct vgpu_fence_rec history[VGPU_HISTORY];

	wait_queue_head_t wq;		/* ring space, fences, idle, death */
	struct work_struct bus_master_work;

	/* Open files, to zap their framebuffer mappings in remove(). */
	struct mutex files_lock;
	struct list_head files;
};

struct vgpu_file {
	struct vgpu_device *vg;
	struct file *file;
	struct list_head node;		/* in vgpu_device.files */
};

static DEFINE_IDA(vgpu_ida);

/* ---- Register access (rule 2: only 32-bit aligned ioread32/iowrite32) ---- */

static inline u32 vgpu_read(struct vgpu_device *vg, u32 reg)
{
	return ioread32(vg->regs + reg);
}

static inline void vgpu_write(struct vgpu_device *vg, u32 reg, u32 val)
{
	iowrite32(val, vg->regs + reg);
}

static const char *vgpu_error_name(u32 code)
{
	switch (code) {
	case 0x00: return "NONE";
	case 0x01: return "WRONG_WIDTH";
	case 0x02: return "UNKNOWN_REGISTER";
	case 0x03: return "READ_ONLY";
	case 0x04: return "BAD_STATE";
	case 0x05: return "RESERVED_BITS";
	case 0x06: return "BAD_MODE";
	case 0x07: return "BAD_RING";
	case 0x08: return "BAD_TAIL";
	case 0x10: return "NO_BUS_MASTER";
	case 0x11: return "DMA_FAULT";
	case 0x12: return "BAD_DESCRIPTOR";
	case 0x20: return "UNKNOWN_OPCODE";
	case 0x21: return "BAD_LENGTH";
	case 0x22: return "TRUNCATED";
	case 0x23: return "NO_MODE";
	case 0x24: return "RECT_OUT_OF_BOUNDS";
	case 0x25: return "STRIDE_TOO_SMALL";
	case 0x26: return "SOURCE_OVERFLOW";
	default: return "unknown";
	}
}

/* Registers worth seeing when the engine seems stuck. */
static void vgpu_dump_state(struct vgpu_device *vg, const char *why)
{
	dev_warn(&vg->pdev->dev,
		 "%s: STATUS %#x INT_STATUS %#x INT_MASK %#x RING_HEAD %u RING_TAIL %u FENCE_COMPLETED %u ERROR_CODE %#x (driver head %u tail %u)\n",
		 why, vgpu_read(vg, VGPU_REG_STATUS), vgpu_read(vg, VGPU_REG_INT_STATUS),
		 vgpu_read(vg, VGPU_REG_INT_MASK), vgpu_read(vg, VGPU_REG_RING_HEAD),
		 vgpu_read(vg, VGPU_REG_RING_TAIL), vgpu_read(vg, VGPU_REG_FENCE_COMPLETED),
		 vgpu_read(vg, VGPU_REG_ERROR_CODE), READ_ONCE(vg->head), READ_ONCE(vg->tail));
}

/* ---- Lifetime -------------------------------------------------------- */

static void vgpu_release(struct kref *ref)
{
	struct vgpu_device *vg = container_of(ref, struct vgpu_device, ref);

	pci_dev_put(vg->pdev);
	kvfree(vg);
}

static void vgpu_put(struct vgpu_device *vg)
{
	kref_put(&vg->ref, vgpu_release);
}

/* ---- Ring bookkeeping (all *_locked functions need vg->lock) ---------- */

static bool vgpu_ring_idle(struct vgpu_device *vg)
{
	unsigned long flags;
	bool idle;

	spin_lock_irqsave(&vg->lock, flags);
	idle = vg->head == vg->tail;
	spin_unlock_irqrestore(&vg->lock, flags);
	return idle;
}

/* Rule 9: the new tail must never reach the head. */
static bool vgpu_ring_has_space(struct vgpu_device *vg)
{
	unsigned long flags;
	bool space;

	spin_lock_irqsave(&vg->lock, flags);
	space = ((vg->tail + 1) & VGPU_RING_MASK) != vg->head;
	spin_unlock_irqrestore(&vg->lock, flags);
	return space;
}

/*
 * Retire every entry the engine has finished: those between our head and
 * the device's RING_HEAD. An entry the device skipped after an error carries
 * the error code the error handler put there; every other entry retired
 * because its whole buffer, FENCE included, executed.
 */
static void vgpu_retire_locked(struct vgpu_device *vg)
{
	u32 hw_head = vgpu_read(vg, VGPU_REG_RING_HEAD);
	u32 completed = vgpu_read(vg, VGPU_REG_FENCE_COMPLETED);
	u32 outstanding = (vg->tail - vg->head) & VGPU_RING_MASK;

	/* RING_HEAD can only move forward, up to the tail we handed over. */
	if (hw_head >= VGPU_RING_SIZE ||
	    ((hw_head - vg->head) & VGPU_RING_MASK) > outstanding) {
		dev_err_ratelimited(&vg->pdev->dev,
				    "RING_HEAD %u outside the outstanding entries %u..%u\n",
				    hw_head, vg->head, vg->tail);
		return;
	}

	while (vg->head != hw_head) {
		struct vgpu_slot *slot = &vg->slots[vg->head];
		struct vgpu_fence_rec *rec = &vg->history[slot->seq % VGPU_HISTORY];

		if (slot->error_code) {
			rec->state = VGPU_FENCE_FAILED;
			rec->error_code = slot->error_code;
			rec->error_offset = slot->error_offset;
		} else {
			/*
			 * Rule 14: fences are compared by value with
			 * wrap-around. FENCE_COMPLETED was read after
			 * RING_HEAD, so it is at least this buffer's fence.
			 */
			WARN_ON_ONCE((s32)(completed - slot->seq) < 0);
			rec->state = VGPU_FENCE_DONE;
		}
		vg->retired_seq = slot->seq;
		vg->head = (vg->head + 1) & VGPU_RING_MASK;
	}
}

/*
 * Is the error in ERROR_CODE one of the "engine" kind (§8), i.e. does it
 * belong to the descriptor at RING_HEAD, which CLEAR_ERROR will skip?
 * RESERVED_BITS and BAD_RING exist as both kinds; a register error's
 * ERROR_ADDR is an offset inside BAR0, an engine error's is a DMA address,
 * which is never in the first page of the bus address space.
 */
static bool vgpu_error_is_engine(u32 code, u64 addr)
{
	if (code == VGPU_ERR_RESERVED_BITS || code == VGPU_ERR_BAD_RING)
		return addr >= VGPU_REG_BAR_SIZE;
	return code >= VGPU_ERR_FIRST_ENGINE;
}

/*
 * Rule 13: read ERROR_CODE and ERROR_ADDR, report them, fail the buffer of
 * the faulting descriptor, then CLEAR_ERROR. Runs in the IRQ handler while
 * the engine is halted, so RING_HEAD is the faulting descriptor.
 */
static void vgpu_handle_error_locked(struct vgpu_device *vg)
{
	struct device *dev = &vg->pdev->dev;
	u32 code = vgpu_read(vg, VGPU_REG_ERROR_CODE);
	u64 addr = vgpu_read(vg, VGPU_REG_ERROR_ADDR_LO) |
		   (u64)vgpu_read(vg, VGPU_REG_ERROR_ADDR_HI) << 32;
	u32 count = vgpu_read(vg, VGPU_REG_ERROR_COUNT);
	u32 hw_head = vgpu_read(vg, VGPU_REG_RING_HEAD) & VGPU_RING_MASK;

	vg->errors++;

	if (code == VGPU_ERR_NO_BUS_MASTER) {
		/*
		 * Someone cleared Bus Master Enable behind our back. The
		 * descriptor is not skipped: turn bus mastering back on and
		 * let the engine retry. pci_set_master() is done from a work
		 * item, in process context.
		 */
		dev_err_ratelimited(dev, "NO_BUS_MASTER: bus mastering was disabled; re-enabling it\n");
		schedule_work(&vg->bus_master_work);
		return;	/* CLEAR_ERROR comes from the work item */
	}

	if (vgpu_error_is_engine(code, addr) && hw_head != vg->tail) {
		struct vgpu_slot *slot = &vg->slots[hw_head];

		slot->error_code = code;
		slot->error_offset = U32_MAX;
		if (addr >= slot->dma && addr < slot->dma + slot->len)
			slot->error_offset = addr - slot->dma;
		dev_warn_ratelimited(dev,
				     "fence %u: device rejected the command buffer: %s (%#x) at offset %#x (%u error(s)); skipping it\n",
				     slot->seq, vgpu_error_name(code), code,
				     slot->error_offset, count);
	} else {
		/* A register error: the driver broke a rule. */
		dev_err_ratelimited(dev, "device reported %s (%#x) at %#llx: driver bug\n",
				    vgpu_error_name(code), code, addr);
	}

	/*
	 * CLEAR_ERROR skips the faulting descriptor. ENABLE must be written
	 * as 1 in the same write: writing CONTROL with ENABLE = 0 would
	 * disable the ring.
	 */
	vgpu_write(vg, VGPU_REG_CONTROL, VGPU_CONTROL_CLEAR_ERROR | VGPU_CONTROL_ENABLE);
}

static void vgpu_bus_master_work(struct work_struct *work)
{
	struct vgpu_device *vg = container_of(work, struct vgpu_device, bus_master_work);

	pci_set_master(vg->pdev);	/* rule 1 */
	spin_lock_irq(&vg->lock);
	if (!vg->dead && vgpu_read(vg, VGPU_REG_ERROR_CODE) == VGPU_ERR_NO_BUS_MASTER)
		vgpu_write(vg, VGPU_REG_CONTROL,
			   VGPU_CONTROL_CLEAR_ERROR | VGPU_CONTROL_ENABLE);
	spin_unlock_irq(&vg->lock);
}

/* ---- Interrupt handler (rule 12) ----------------------------------- */

static irqreturn_t vgpu_irq(int irq, void *arg)
{
	struct vgpu_device *vg = arg;
	u32 pending;

	pending = vgpu_read(vg, VGPU_REG_INT_STATUS);
	/*
	 * 0: not ours (INTx may be shared). All ones: the device is gone
	 * (a read from a removed PCI device returns ~0); writing that back
	 * would set reserved bits.
	 */
	if (!pending || pending == ~0u)
		return IRQ_NONE;

	/*
	 * Acknowledge exactly what we saw, *before* looking at the state we
	 * act on. With MSI a cause that repeats while its bit is still set
	 * sends no new message (§7): acknowledging first means anything that
	 * happens after this write either raises a new interrupt or is
	 * already visible in the registers we read below.
	 */
	vgpu_write(vg, VGPU_REG_INT_STATUS, pending & VGPU_INT_VALID);

	spin_lock(&vg->lock);
	/*
	 * STATUS.ERROR rather than the INT_ERROR bit: an error latched after
	 * our INT_STATUS read is handled now, and the interrupt it raised
	 * finds nothing left to do.
	 */
	if (vgpu_read(vg, VGPU_REG_STATUS) & VGPU_STATUS_ERROR)
		vgpu_handle_error_locked(vg);
	vgpu_retire_locked(vg);
	spin_unlock(&vg->lock);

	/* Submitters waiting for space, fence waiters, SET_MODE, remove(). */
	wake_up_all(&vg->wq);
	return IRQ_HANDLED;
}

/* ---- Command buffer checking --------------------------------------- */

/*
 * UPLOAD_IMAGE's source address arrives as a byte offset into the data
 * blob. Check that the whole span the device will read lies inside the blob
 * and replace the offset by the blob's bus address (rule 7: the device must
 * only read memory the driver allocated). The arithmetic is done with
 * overflow checks: w, h and stride are user-controlled 32-bit values.
 */
static int vgpu_relocate_upload(__le32 *cmd, dma_addr_t data_dma, u32 data_len)
{
	u32 w = le32_to_cpu(cmd[3]);
	u32 h = le32_to_cpu(cmd[4]);
	u64 off = le32_to_cpu(cmd[5]) | (u64)le32_to_cpu(cmd[6]) << 32;
	u32 stride = le32_to_cpu(cmd[7]);
	u64 span = 0;
	u64 addr;

	if (w && h) {	/* the device reads nothing for an empty rectangle */
		if (check_mul_overflow((u64)(h - 1), (u64)stride, &span) ||
		    check_add_overflow(span, (u64)w * 4, &span))
			return -EINVAL;
	}
	if (off > data_len || span > data_len - off)
		return -EINVAL;

	addr = data_dma + off;
	cmd[5] = cpu_to_le32(lower_32_bits(addr));
	cmd[6] = cpu_to_le32(upper_32_bits(addr));
	return 0;
}

/*
 * Walk the command buffer (already copied into the driver's DMA buffer, so
 * user space can no longer change it: no time-of-check/time-of-use race)
 * and check its structure. The driver must understand the structure to find
 * and relocate UPLOAD_IMAGE sources; it rejects what the device would reject
 * anyway so user space gets -EINVAL at once. Drawing semantics (mode,
 * rectangle bounds, stride) are left to the device, which checks them
 * (§6) and reports failures as errors (see vgpu_handle_error_locked).
 */
static int vgpu_check_buffer(struct device *dev, struct vgpu_slot *slot,
			     u32 cmd_len, u32 data_len)
{
	__le32 *cmd = slot->cpu;
	u32 n = cmd_len / 4;
	u32 i = 0;

	while (i < n) {
		u32 hdr = le32_to_cpu(cmd[i]);
		u32 op = hdr & 0xff;
		u32 len = hdr >> 16;
		u32 want;

		if (hdr & VGPU_CMD_RESERVED || len == 0 || len > n - i) {
			dev_dbg(dev, "submit: bad header %#x at offset %#x\n", hdr, i * 4);
			return -EINVAL;
		}
		switch (op) {
		case VGPU_OP_NOP:
			want = len;
			break;
		case VGPU_OP_FILL_RECT:
			want = VGPU_FILL_RECT_DWORDS;
			break;
		case VGPU_OP_COPY_RECT:
			want = VGPU_COPY_RECT_DWORDS;
			break;
		case VGPU_OP_UPLOAD_IMAGE:
			want = VGPU_UPLOAD_IMAGE_DWORDS;
			break;
		case VGPU_OP_FENCE:	/* the driver owns the fence sequence */
		default:
			dev_dbg(dev, "submit: opcode %#x not allowed at offset %#x\n", op, i * 4);
			return -EINVAL;
		}
		if (len != want) {
			dev_dbg(dev, "submit: opcode %#x with length %u at offset %#x\n",
				op, len, i * 4);
			return -EINVAL;
		}
		if (op == VGPU_OP_UPLOAD_IMAGE &&
		    vgpu_relocate_upload(&cmd[i], slot->dma + VGPU_DATA_OFFSET, data_len)) {
			dev_dbg(dev, "submit: image source outside the data blob at offset %#x\n",
				i * 4);
			return -EINVAL;
		}
		i += len;
	}
	return 0;
}

/* ---- ioctls ---------------------------------------------------------- */

static long vgpu_ioctl_submit(struct vgpu_device *vg, struct vgpu_submit __user *uarg)
{
	struct vgpu_submit req;
	struct vgpu_slot *slot;
	struct vgpu_desc *desc;
	__le32 *cmd;
	u32 idx, next, seq;
	long ret;

	if (copy_from_user(&req, uarg, sizeof(req)))
		return -EFAULT;
	if (req.flags || req.cmd_len < 4 || req.cmd_len > VGPU_MAX_CMD_BYTES ||
	    req.cmd_len % 4 || req.data_len > VGPU_MAX_DATA_BYTES)
		return -EINVAL;

	ret = mutex_lock_interruptible(&vg->submit_lock);
	if (ret)
		return ret;
	if (vg->dead) {
		ret = -ENODEV;
		goto out;
	}

	/*
	 * Rule 9: wait for a free ring entry. Only the submit_lock holder
	 * produces, so once there is space it stays there. The timeout
	 * turns a hung engine into an error instead of a stuck process.
	 */
	ret = wait_event_interruptible_timeout(vg->wq, vgpu_ring_has_space(vg),
					       VGPU_STALL_TIMEOUT);
	if (ret == 0) {
		vgpu_dump_state(vg, "submit: ring full for 5 s");
		ret = -ETIMEDOUT;
	}
	if (ret < 0)
		goto out;

	/*
	 * vg->tail is written only under submit_lock, which we hold, so it
	 * may be read without the spinlock here. The entry at the tail and
	 * its buffer are not owned by the device (rule 10).
	 */
	idx = vg->tail;
	next = (idx + 1) & VGPU_RING_MASK;
	slot = &vg->slots[idx];
	cmd = slot->cpu;

	if (copy_from_user(cmd, u64_to_user_ptr(req.cmds), req.cmd_len) ||
	    (req.data_len &&
	     copy_from_user(slot->cpu + VGPU_DATA_OFFSET, u64_to_user_ptr(req.data),
			    req.data_len))) {
		ret = -EFAULT;
		goto out;
	}
	ret = vgpu_check_buffer(&vg->pdev->dev, slot, req.cmd_len, req.data_len);
	if (ret)
		goto out;

	spin_lock_irq(&vg->lock);
	seq = vg->last_seq + 1;
	if (seq == 0)		/* 0 means "no fence" in the ABI */
		seq = 1;
	vg->last_seq = seq;
	slot->seq = seq;
	slot->len = req.cmd_len + 4 * VGPU_FENCE_DWORDS;
	slot->error_code = 0;
	slot->error_offset = 0;
	vg->history[seq % VGPU_HISTORY] = (struct vgpu_fence_rec) {
		.seq = seq,
		.state = VGPU_FENCE_PENDING,
	};
	vg->tail = next;
	spin_unlock_irq(&vg->lock);

	/* Our FENCE after the user's commands: the completion signal. */
	cmd[req.cmd_len / 4] = cpu_to_le32(VGPU_CMD_HEADER(VGPU_OP_FENCE, VGPU_FENCE_DWORDS));
	cmd[req.cmd_len / 4 + 1] = cpu_to_le32(seq);

	desc = &vg->ring[idx];
	desc->buffer_addr = cpu_to_le64(slot->dma);
	desc->length = cpu_to_le32(slot->len);
	desc->flags = 0;

	/*
	 * Rule 8: command buffer and descriptor complete, then a write
	 * barrier, then RING_TAIL, then DOORBELL. (Linux's iowrite32() is
	 * itself ordered after earlier writes to coherent DMA memory -- see
	 * "KERNEL I/O BARRIER EFFECTS" in Documentation/memory-barriers.txt --
	 * so wmb() is belt and braces; it documents the requirement.)
	 */
	wmb();
	vgpu_write(vg, VGPU_REG_RING_TAIL, next);
	vgpu_write(vg, VGPU_REG_DOORBELL, 1);
	ret = 0;
out:
	mutex_unlock(&vg->submit_lock);
	if (ret)
		return ret;
	return put_user(seq, &uarg->fence);
}

/* 1 while the fence is pending; 0 (and *out filled) once retired; or -errno. */
static int vgpu_fence_status(struct vgpu_device *vg, u32 seq, struct vgpu_fence_rec *out)
{
	struct vgpu_fence_rec *rec;
	unsigned long flags;
	int ret;

	spin_lock_irqsave(&vg->lock, flags);
	rec = &vg->history[seq % VGPU_HISTORY];
	if (vg->dead)
		ret = -ENODEV;
	else if (seq == 0 || (s32)(seq - vg->last_seq) > 0)	/* rule 14 */
		ret = -EINVAL;
	else if (rec->seq != seq)
		ret = -ESTALE;
	else if (rec->state == VGPU_FENCE_PENDING)
		ret = 1;
	else {
		*out = *rec;
		ret = 0;
	}
	spin_unlock_irqrestore(&vg->lock, flags);
	return ret;
}

static long vgpu_ioctl_wait(struct vgpu_device *vg, struct vgpu_wait __user *uarg)
{
	struct vgpu_fence_rec rec;
	struct vgpu_wait req;
	long ret;
	int st;

	if (copy_from_user(&req, uarg, sizeof(req)))
		return -EFAULT;

	/*
	 * Rule 14: sleep until the interrupt handler retired the fence, with
	 * a timeout; never busy-wait. The condition is re-evaluated after
	 * every wake-up, under the spinlock.
	 */
	st = vgpu_fence_status(vg, req.fence, &rec);
	if (st == 1 && req.timeout_ms) {
		ret = wait_event_interruptible_timeout(vg->wq,
				(st = vgpu_fence_status(vg, req.fence, &rec)) != 1,
				msecs_to_jiffies(req.timeout_ms));
		if (ret < 0)
			return ret;	/* -ERESTARTSYS: a signal */
	}
	if (st == 1)
		return -ETIMEDOUT;
	if (st < 0)
		return st;

	req.error_code = 0;
	req.error_offset = 0;
	if (rec.state == VGPU_FENCE_FAILED) {
		req.error_code = rec.error_code;
		req.error_offset = rec.error_offset;
	}
	if (copy_to_user(uarg, &req, sizeof(req)))
		return -EFAULT;
	return rec.state == VGPU_FENCE_FAILED ? -EIO : 0;
}

static long vgpu_ioctl_set_mode(struct vgpu_device *vg, struct vgpu_mode __user *uarg)
{
	struct vgpu_mode req;
	u32 status, stride;
	long ret;

	if (copy_from_user(&req, uarg, sizeof(req)))
		return -EFAULT;
	if (req.format != VGPU_FORMAT_XRGB8888 || req.reserved ||
	    req.flags & ~VGPU_MODE_CLEAR ||
	    req.width == 0 || req.width > vg->max_width ||
	    req.height == 0 || req.height > vg->max_height)
		return -EINVAL;

	ret = mutex_lock_interruptible(&vg->submit_lock);
	if (ret)
		return ret;
	if (vg->dead) {
		ret = -ENODEV;
		goto out;
	}

	/*
	 * Rule 5: the mode may change only while the engine is idle. We hold
	 * submit_lock, so nothing new is queued while we wait.
	 */
	ret = wait_event_interruptible_timeout(vg->wq, vgpu_ring_idle(vg),
					       VGPU_STALL_TIMEOUT);
	if (ret == 0) {
		vgpu_dump_state(vg, "set mode: engine busy for 5 s");
		ret = -ETIMEDOUT;
	}
	if (ret < 0)
		goto out;

	vgpu_write(vg, VGPU_REG_MODE_WIDTH, req.width);
	vgpu_write(vg, VGPU_REG_MODE_HEIGHT, req.height);
	vgpu_write(vg, VGPU_REG_MODE_FORMAT, req.format);

	/* Rule 5: read MODE_STRIDE back and use it, never width * 4. */
	stride = vgpu_read(vg, VGPU_REG_MODE_STRIDE);
	status = vgpu_read(vg, VGPU_REG_STATUS);
	if (!(status & VGPU_STATUS_MODE_SET) || stride < req.width * 4 ||
	    (u64)stride * req.height > vg->fb_len) {
		dev_err(&vg->pdev->dev, "mode %ux%u not accepted (STATUS %#x, stride %u)\n",
			req.width, req.height, status, stride);
		ret = -EIO;
		goto out;
	}
	if (req.flags & VGPU_MODE_CLEAR)
		memset_io(vg->fb, 0, (size_t)stride * req.height);
	req.stride = stride;
	ret = 0;
out:
	mutex_unlock(&vg->submit_lock);
	if (ret)
		return ret;
	return copy_to_user(uarg, &req, sizeof(req)) ? -EFAULT : 0;
}

static long vgpu_ioctl_info(struct vgpu_device *vg, struct vgpu_info __user *uarg)
{
	struct vgpu_info info = {};
	long ret;

	/* submit_lock: the registers are mapped until remove() sets ->dead. */
	ret = mutex_lock_interruptible(&vg->submit_lock);
	if (ret)
		return ret;
	if (vg->dead) {
		mutex_unlock(&vg->submit_lock);
		return -ENODEV;
	}
	info.version = vgpu_read(vg, VGPU_REG_VERSION);
	info.fb_size = vg->fb_len;
	info.max_width = vg->max_width;
	info.max_height = vg->max_height;
	info.stride = vgpu_read(vg, VGPU_REG_MODE_STRIDE);
	if (info.stride) {	/* 0 unless the mode is valid */
		info.width = vgpu_read(vg, VGPU_REG_MODE_WIDTH);
		info.height = vgpu_read(vg, VGPU_REG_MODE_HEIGHT);
		info.format = vgpu_read(vg, VGPU_REG_MODE_FORMAT);
	}
	info.ring_size = VGPU_RING_SIZE;
	info.max_cmd_bytes = VGPU_MAX_CMD_BYTES;
	info.max_data_bytes = VGPU_MAX_DATA_BYTES;
	info.irq_is_msi = vg->msi;
	spin_lock_irq(&vg->lock);
	info.last_submitted = vg->last_seq;
	info.last_retired = vg->retired_seq;
	info.errors = vg->errors;
	spin_unlock_irq(&vg->lock);
	mutex_unlock(&vg->submit_lock);

	return copy_to_user(uarg, &info, sizeof(info)) ? -EFAULT : 0;
}

static long vgpu_ioctl(struct file *file, unsigned int cmd, unsigned long arg)
{
	struct vgpu_file *vf = file->private_data;
	void __user *uarg = (void __user *)arg;

	switch (cmd) {
	case VGPU_IOC_INFO:
		return vgpu_ioctl_info(vf->vg, uarg);
	case VGPU_IOC_SET_MODE:
		return vgpu_ioctl_set_mode(vf->vg, uarg);
	case VGPU_IOC_SUBMIT:
		return vgpu_ioctl_submit(vf->vg, uarg);
	case VGPU_IOC_WAIT_FENCE:
		return vgpu_ioctl_wait(vf->vg, uarg);
	default:
		return -ENOTTY;
	}
}

/* ---- open, release, mmap ------------------------------------------- */

static int vgpu_open(struct inode *inode, struct file *file)
{
	/* misc_open() put our miscdevice here and holds misc_mtx: remove()
	 * cannot have passed misc_deregister(), so vg is alive. */
	struct miscdevice *misc = file->private_data;
	struct vgpu_device *vg = container_of(misc, struct vgpu_device, misc);
	struct vgpu_file *vf;

	vf = kzalloc(sizeof(*vf), GFP_KERNEL);
	if (!vf)
		return -ENOMEM;
	kref_get(&vg->ref);
	vf->vg = vg;
	vf->file = file;
	mutex_lock(&vg->files_lock);
	list_add(&vf->node, &vg->files);
	mutex_unlock(&vg->files_lock);
	file->private_data = vf;
	return 0;
}

/* Called when the last reference to the file is gone: fds *and* mmaps. */
static int vgpu_release_file(struct inode *inode, struct file *file)
{
	struct vgpu_file *vf = file->private_data;
	struct vgpu_device *vg = vf->vg;

	mutex_lock(&vg->files_lock);
	list_del(&vf->node);
	mutex_unlock(&vg->files_lock);
	kfree(vf);
	vgpu_put(vg);
	return 0;
}

/*
 * The framebuffer (BAR2) in user space, write-combining: pixel writes are
 * buffered and burst to the device instead of one uncached bus cycle each.
 *
 * Pages are inserted on first touch (a fault handler) rather than all at
 * once in mmap() with vm_iomap_memory()/io_remap_pfn_range(). The reason is
 * remove(): it must take every mapping away (unmap_mapping_range()) before
 * BAR2 is released. PTEs installed inside ->mmap exist before the VMA is
 * linked into the file's mapping, so a remove() running at that moment
 * would miss them; a fault can only happen on a fully linked VMA, and the
 * fault handler checks ->dead under files_lock, the lock remove() holds
 * while zapping.
 *
 * The memory type: x86 PAT gives PFN mappings the type already reserved
 * for the physical range, here write-combining by the kernel's own
 * devm_ioremap_wc() of BAR2 (a UC kernel mapping would silently make the
 * user mapping UC too).
 *
 * After user space writes pixels that the engine will read (COPY_RECT), it
 * must drain its write-combining buffers (a store fence, e.g. sfence or
 * __sync_synchronize()) before SUBMIT.
 */
static vm_fault_t vgpu_vm_fault(struct vm_fault *vmf)
{
	struct vgpu_file *vf = vmf->vma->vm_file->private_data;
	struct vgpu_device *vg = vf->vg;
	unsigned long offset = vmf->pgoff << PAGE_SHIFT;	/* into BAR2 */
	vm_fault_t ret;

	mutex_lock(&vg->files_lock);
	if (vg->dead || offset >= vg->fb_len)
		ret = VM_FAULT_SIGBUS;
	else
		ret = vmf_insert_pfn(vmf->vma, vmf->address,
				     PHYS_PFN(vg->fb_phys + offset));
	mutex_unlock(&vg->files_lock);
	return ret;
}

static const struct vm_operations_struct vgpu_vm_ops = {
	.fault = vgpu_vm_fault,
};

static int vgpu_mmap(struct file *file, struct vm_area_struct *vma)
{
	struct vgpu_file *vf = file->private_data;
	struct vgpu_device *vg = vf->vg;
	unsigned long pages = vg->fb_len >> PAGE_SHIFT;

	/* A private (copy-on-write) mapping of device memory makes no sense. */
	if (!(vma->vm_flags & VM_SHARED))
		return -EINVAL;
	if (vma->vm_pgoff >= pages || vma_pages(vma) > pages - vma->vm_pgoff)
		return -EINVAL;
	if (READ_ONCE(vg->dead))	/* early answer; the fault handler decides */
		return -ENODEV;

	/*
	 * VM_PFNMAP: no struct pages behind it; VM_IO: device memory (no
	 * core dumps, no get_user_pages); VM_DONTEXPAND: mremap() cannot grow
	 * it past the framebuffer. (Linux >= 6.3 spells this vm_flags_set().)
	 */
	vma->vm_flags |= VM_PFNMAP | VM_IO | VM_DONTEXPAND | VM_DONTDUMP;
	vma->vm_page_prot = pgprot_writecombine(vma->vm_page_prot);
	vma->vm_ops = &vgpu_vm_ops;
	return 0;
}

static const struct file_operations vgpu_fops = {
	.owner = THIS_MODULE,
	.open = vgpu_open,
	.release = vgpu_release_file,
	.unlocked_ioctl = vgpu_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
	.mmap = vgpu_mmap,
	.llseek = noop_llseek,
};

/* ---- probe and remove ---------------------------------------------- */

static int vgpu_setup_ring(struct vgpu_device *vg)
{
	struct device *dev = &vg->pdev->dev;
	u32 status;
	int i;

	/*
	 * Rule 6: the ring is coherent memory the driver allocated,
	 * RING_SIZE * 16 bytes, 16-byte aligned (dma_alloc_coherent returns
	 * page-aligned memory). The dmam_ variant is freed by devres after
	 * remove() -- after the device has been reset and stopped using it.
	 */
	vg->ring = dmam_alloc_coherent(dev, VGPU_RING_SIZE * sizeof(struct vgpu_desc),
				       &vg->ring_dma, GFP_KERNEL);
	if (!vg->ring)
		return -ENOMEM;
	for (i = 0; i < VGPU_RING_SIZE; i++) {
		vg->slots[i].cpu = dmam_alloc_coherent(dev, VGPU_BUF_SIZE,
						       &vg->slots[i].dma, GFP_KERNEL);
		if (!vg->slots[i].cpu)
			return -ENOMEM;
	}

	/* Rule 6: RING_BASE and RING_SIZE while the ring is disabled (it is,
	 * after the reset in probe), then CONTROL.ENABLE. */
	vgpu_write(vg, VGPU_REG_RING_BASE_LO, lower_32_bits(vg->ring_dma));
	vgpu_write(vg, VGPU_REG_RING_BASE_HI, upper_32_bits(vg->ring_dma));
	vgpu_write(vg, VGPU_REG_RING_SIZE, VGPU_RING_SIZE);
	vgpu_write(vg, VGPU_REG_CONTROL, VGPU_CONTROL_ENABLE);

	status = vgpu_read(vg, VGPU_REG_STATUS);
	if (!(status & VGPU_STATUS_ENABLED)) {
		u32 code = vgpu_read(vg, VGPU_REG_ERROR_CODE);

		dev_err(dev, "ring not accepted: STATUS %#x, %s (%#x)\n",
			status, vgpu_error_name(code), code);
		return -EIO;
	}
	vg->head = 0;		/* CONTROL.ENABLE zeroed RING_HEAD/RING_TAIL */
	vg->tail = 0;
	return 0;
}

static int vgpu_probe(struct pci_dev *pdev, const struct pci_device_id *id)
{
	struct device *dev = &pdev->dev;
	struct vgpu_device *vg;
	u32 idreg, version, max_size;
	int ret;

	vg = kvzalloc(sizeof(*vg), GFP_KERNEL);
	if (!vg)
		return -ENOMEM;
	kref_init(&vg->ref);
	vg->pdev = pci_dev_get(pdev);
	mutex_init(&vg->submit_lock);
	spin_lock_init(&vg->lock);
	init_waitqueue_head(&vg->wq);
	INIT_WORK(&vg->bus_master_work, vgpu_bus_master_work);
	mutex_init(&vg->files_lock);
	INIT_LIST_HEAD(&vg->files);
	vg->id = -1;

	/* Managed (pcim_/devm_/dmam_) resources are released by devres
	 * after remove() returns or when probe fails. */
	ret = pcim_enable_device(pdev);
	if (ret)
		goto err_put;
	ret = pcim_iomap_regions(pdev, BIT(VGPU_REG_BAR), KBUILD_MODNAME);
	if (ret)
		goto err_put;
	if (pci_resource_len(pdev, VGPU_REG_BAR) < VGPU_REG_BAR_SIZE) {
		ret = -ENODEV;
		goto err_put;
	}
	vg->regs = pcim_iomap_table(pdev)[VGPU_REG_BAR];

	/* Rule 3: the right device, major version 1. */
	idreg = vgpu_read(vg, VGPU_REG_ID);
	version = vgpu_read(vg, VGPU_REG_VERSION);
	if (idreg != VGPU_ID_VALUE || version >> 16 != VGPU_VERSION_MAJOR) {
		dev_err(dev, "unsupported device: ID %#x VERSION %#x\n", idreg, version);
		ret = -ENODEV;
		goto err_put;
	}

	/* Rule 4: start from the reset state (whatever ran before us). */
	vgpu_write(vg, VGPU_REG_CONTROL, VGPU_CONTROL_RESET);

	/* A cheap check that BAR0 really is this device's register page. */
	vgpu_write(vg, VGPU_REG_SCRATCH, 0x5ca1ab1e);
	if (vgpu_read(vg, VGPU_REG_SCRATCH) != 0x5ca1ab1e) {
		dev_err(dev, "SCRATCH register does not hold a value\n");
		ret = -EIO;
		goto err_put;
	}
	vgpu_write(vg, VGPU_REG_SCRATCH, 0);

	/* The framebuffer: request BAR2 and map it write-combining. */
	vg->fb_len = vgpu_read(vg, VGPU_REG_FB_SIZE);
	if (!(pci_resource_flags(pdev, VGPU_FB_BAR) & IORESOURCE_MEM) ||
	    !vg->fb_len || !PAGE_ALIGNED(vg->fb_len) ||
	    pci_resource_len(pdev, VGPU_FB_BAR) < vg->fb_len) {
		dev_err(dev, "BAR2 does not hold FB_SIZE %#x bytes\n", vg->fb_len);
		ret = -ENODEV;
		goto err_put;
	}
	ret = pci_request_region(pdev, VGPU_FB_BAR, KBUILD_MODNAME); /* managed by pcim */
	if (ret)
		goto err_put;
	vg->fb_phys = pci_resource_start(pdev, VGPU_FB_BAR);
	vg->fb = devm_ioremap_wc(dev, vg->fb_phys, vg->fb_len);
	if (!vg->fb) {
		ret = -ENOMEM;
		goto err_put;
	}
	max_size = vgpu_read(vg, VGPU_REG_MAX_SIZE);
	vg->max_width = max_size & 0xffff;
	vg->max_height = max_size >> 16;

	/* The engine takes 64-bit bus addresses. */
	ret = dma_set_mask_and_coherent(dev, DMA_BIT_MASK(64));
	if (ret)
		goto err_put;

	/* Rule 1: bus mastering before the first doorbell. */
	pci_set_master(pdev);

	ret = vgpu_setup_ring(vg);
	if (ret)
		goto err_reset;

	vg->id = ida_alloc(&vgpu_ida, GFP_KERNEL);
	if (vg->id < 0) {
		ret = vg->id;
		goto err_reset;
	}
	snprintf(vg->name, sizeof(vg->name), "vgpu%d", vg->id);

	/* One vector: MSI if the platform offers it, else INTx (shared). */
	ret = pci_alloc_irq_vectors(pdev, 1, 1, PCI_IRQ_MSI | PCI_IRQ_LEGACY);
	if (ret < 0)
		goto err_ida;
	vg->msi = pdev->msi_enabled;
	vg->irq = pci_irq_vector(pdev, 0);
	ret = request_irq(vg->irq, vgpu_irq, vg->msi ? 0 : IRQF_SHARED, vg->name, vg);
	if (ret)
		goto err_vectors;

	/* Rule 11: unmask only once the handler is installed. */
	vgpu_write(vg, VGPU_REG_INT_MASK, VGPU_INT_ENABLED);

	pci_set_drvdata(pdev, vg);

	/* Last: from here on user space can open /dev/vgpuN. */
	vg->misc.minor = MISC_DYNAMIC_MINOR;
	vg->misc.name = vg->name;
	vg->misc.fops = &vgpu_fops;
	vg->misc.parent = dev;
	ret = misc_register(&vg->misc);
	if (ret)
		goto err_irq;

	dev_info(dev, "%s: vgpu %u.%u, %u KiB framebuffer at %pa, ring of %u at %pad, irq %d (%s)\n",
		 vg->name, version >> 16, version & 0xffff, vg->fb_len / 1024,
		 &vg->fb_phys, VGPU_RING_SIZE, &vg->ring_dma, vg->irq,
		 vg->msi ? "MSI" : "INTx");
	return 0;

err_irq:
	vgpu_write(vg, VGPU_REG_INT_MASK, 0);	/* rule 11 */
	free_irq(vg->irq, vg);
err_vectors:
	pci_free_irq_vectors(pdev);
err_ida:
	ida_free(&vgpu_ida, vg->id);
err_reset:
	vgpu_write(vg, VGPU_REG_CONTROL, VGPU_CONTROL_RESET);	/* rule 4 */
err_put:
	vgpu_put(vg);
	return ret;
}

static void vgpu_remove(struct pci_dev *pdev)
{
	struct vgpu_device *vg = pci_get_drvdata(pdev);
	struct vgpu_file *vf;

	/* No new opens. Files already open keep vg alive (kref). */
	misc_deregister(&vg->misc);

	/*
	 * Stop producers: with submit_lock held nobody queues work. Rule 15:
	 * let the engine finish what it owns (the interrupt handler still
	 * runs and retires it), or give up and reset below.
	 */
	mutex_lock(&vg->submit_lock);
	if (!wait_event_timeout(vg->wq, vgpu_ring_idle(vg), VGPU_STALL_TIMEOUT))
		vgpu_dump_state(vg, "remove: engine still busy; resetting it");
	spin_lock_irq(&vg->lock);
	vg->dead = true;
	spin_unlock_irq(&vg->lock);
	mutex_unlock(&vg->submit_lock);

	/*
	 * Zap every user mapping of the framebuffer: BAR2 is about to be
	 * released. A later access to such a mapping faults, and the fault
	 * handler, which checks ->dead under files_lock, answers SIGBUS
	 * instead of mapping a BAR that may soon belong to someone else.
	 */
	mutex_lock(&vg->files_lock);
	list_for_each_entry(vf, &vg->files, node)
		unmap_mapping_range(vf->file->f_mapping, 0, 0, 1);
	mutex_unlock(&vg->files_lock);

	/* Rule 11: mask before free_irq(), which also waits for a running handler. */
	vgpu_write(vg, VGPU_REG_INT_MASK, 0);
	free_irq(vg->irq, vg);
	cancel_work_sync(&vg->bus_master_work);

	/* Rule 4: reset; the engine stops and forgets the ring. */
	vgpu_write(vg, VGPU_REG_CONTROL, VGPU_CONTROL_RESET);
	pci_free_irq_vectors(pdev);

	/* Waiters see ->dead and return -ENODEV. */
	wake_up_all(&vg->wq);

	ida_free(&vgpu_ida, vg->id);
	vgpu_put(vg);
	/* devres now unmaps the BARs, frees the DMA memory and disables the
	 * device (bus mastering off). */
}

static const struct pci_device_id vgpu_ids[] = {
	{ PCI_DEVICE(VGPU_VENDOR_ID, VGPU_DEVICE_ID) },
	{ }
};
MODULE_DEVICE_TABLE(pci, vgpu_ids);

static struct pci_driver vgpu_driver = {
	.name = KBUILD_MODNAME,
	.id_table = vgpu_ids,
	.probe = vgpu_probe,
	.remove = vgpu_remove,
};
module_pci_driver(vgpu_driver);

MODULE_DESCRIPTION("vgpu: the teaching GPU of vlab (docs/devices/vgpu.md)");
MODULE_AUTHOR("vlab");
MODULE_LICENSE("GPL");
