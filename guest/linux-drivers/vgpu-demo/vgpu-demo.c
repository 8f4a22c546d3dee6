// SPDX-License-Identifier: GPL-2.0
/*
 * vgpu-demo - draw a scene on vgpu through the vgpu Linux driver.
 *
 *   vgpu-demo [-d /dev/vgpu0] [-W 640] [-H 480] [-n] [-r]
 *
 * Opens /dev/vgpu0, sets a mode, draws with four command buffers (fills, an
 * uploaded image, copies, including one of pixels the CPU wrote), writes
 * pixels directly through the mmap()ed framebuffer, waits for the fences,
 * and then checks every visible pixel against a software model of the same
 * drawing. It also checks the driver's error paths: a buffer the driver
 * must refuse (EINVAL) and one the device must reject (EIO with
 * RECT_OUT_OF_BOUNDS), after which the engine must still work.
 *
 * Prints a checksum (FNV-1a over the visible pixels, row by row, without the
 * stride padding) and exits 0 if everything matched, 1 otherwise.
 *
 *   -n  skip the error-path checks
 *   -r  only compute and print the expected checksum (no device needed)
 *
 * Built statically (gcc -static) so it runs from a bare initramfs.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "vgpu_uapi.h"

#define ERR_RECT_OUT_OF_BOUNDS	0x24	/* datasheet §8 */
#define WAIT_MS			5000

static int failures;

#define CHECK(cond, ...) do {						\
	if (!(cond)) {							\
		fprintf(stderr, "vgpu-demo: FAIL: " __VA_ARGS__);	\
		fputc('\n', stderr);					\
		failures++;						\
	}								\
} while (0)

/* ---- Building command buffers -------------------------------------- */

struct cmdbuf {
	uint32_t w[1024];
	unsigned int n;
};

static void emit(struct cmdbuf *b, const uint32_t *words, unsigned int count)
{
	if (b->n + count > sizeof(b->w) / 4) {
		fprintf(stderr, "vgpu-demo: command buffer overflow\n");
		exit(2);
	}
	/* vgpu is little-endian; so is every CPU vlab runs. */
	memcpy(&b->w[b->n], words, count * 4);
	b->n += count;
}

/* ---- The software model (what the device must have drawn) ------- */

struct model {
	uint32_t *px;	/* width * height, no stride padding */
	uint32_t width, height;
};

static void model_fill(struct model *m, uint32_t x, uint32_t y, uint32_t w,
		       uint32_t h, uint32_t color)
{
	for (uint32_t r = 0; r < h; r++)
		for (uint32_t c = 0; c < w; c++)
			m->px[(y + r) * m->width + x + c] = color;
}

static void model_copy(struct model *m, uint32_t sx, uint32_t sy, uint32_t dx,
		       uint32_t dy, uint32_t w, uint32_t h)
{
	uint32_t *tmp = malloc((size_t)w * h * 4 + 4);	/* memmove semantics */

	if (!tmp)
		exit(2);
	for (uint32_t r = 0; r < h; r++)
		memcpy(&tmp[r * w], &m->px[(sy + r) * m->width + sx], w * 4);
	for (uint32_t r = 0; r < h; r++)
		memcpy(&m->px[(dy + r) * m->width + dx], &tmp[r * w], w * 4);
	free(tmp);
}

static void model_upload(struct model *m, uint32_t x, uint32_t y, uint32_t w,
			 uint32_t h, const uint8_t *src, uint32_t stride)
{
	for (uint32_t r = 0; r < h; r++)
		memcpy(&m->px[(y + r) * m->width + x], src + (size_t)r * stride, w * 4);
}

/* Both the device and the model go through these. */
struct target {
	struct model *m;
	struct cmdbuf *b;
};

static void fill(struct target *t, uint32_t x, uint32_t y, uint32_t w, uint32_t h,
		 uint32_t color)
{
	uint32_t c[] = { VGPU_CMD_HEADER(VGPU_OP_FILL_RECT, VGPU_FILL_RECT_DWORDS),
			 x, y, w, h, color };

	emit(t->b, c, 6);
	model_fill(t->m, x, y, w, h, color);
}

static void copy(struct target *t, uint32_t sx, uint32_t sy, uint32_t dx,
		 uint32_t dy, uint32_t w, uint32_t h)
{
	uint32_t c[] = { VGPU_CMD_HEADER(VGPU_OP_COPY_RECT, VGPU_COPY_RECT_DWORDS),
			 sx, sy, dx, dy, w, h };

	emit(t->b, c, 7);
	model_copy(t->m, sx, sy, dx, dy, w, h);
}

/* The source is a byte offset into the submission's data blob. */
static void upload(struct target *t, uint32_t x, uint32_t y, uint32_t w, uint32_t h,
		   const uint8_t *blob, uint64_t offset, uint32_t stride)
{
	uint32_t c[] = { VGPU_CMD_HEADER(VGPU_OP_UPLOAD_IMAGE, VGPU_UPLOAD_IMAGE_DWORDS),
			 x, y, w, h, (uint32_t)offset, (uint32_t)(offset >> 32), stride };

	emit(t->b, c, 8);
	model_upload(t->m, x, y, w, h, blob + offset, stride);
}

static void nop(struct cmdbuf *b, unsigned int dwords)
{
	uint32_t c[16] = { VGPU_CMD_HEADER(VGPU_OP_NOP, dwords), 0xdeadbeef };

	emit(b, c, dwords);
}

/* ---- Talking to the driver ----------------------------------------- */

static int submit(int fd, const struct cmdbuf *b, const void *data, uint32_t data_len,
		  uint32_t *fence)
{
	struct vgpu_submit s = {
		.cmds = (uintptr_t)b->w,
		.data = (uintptr_t)data,
		.cmd_len = b->n * 4,
		.data_len = data_len,
	};

	if (ioctl(fd, VGPU_IOC_SUBMIT, &s) < 0)
		return -errno;
	*fence = s.fence;
	return 0;
}

/* 0 on success, else -errno; *w holds the error details on -EIO. */
static int wait_fence(int fd, uint32_t fence, struct vgpu_wait *w)
{
	memset(w, 0, sizeof(*w));
	w->fence = fence;
	w->timeout_ms = WAIT_MS;
	if (ioctl(fd, VGPU_IOC_WAIT_FENCE, w) < 0)
		return -errno;
	return 0;
}

static void submit_and_check(int fd, const struct cmdbuf *b, const void *data,
			     uint32_t data_len, const char *what, uint32_t *fence)
{
	int ret = submit(fd, b, data, data_len, fence);

	CHECK(ret == 0, "submit %s: %s", what, strerror(-ret));
	if (ret == 0)
		printf("vgpu-demo: submitted %s: %u bytes of commands, %u of data, fence %u\n",
		       what, b->n * 4, data_len, *fence);
}

static void wait_and_check(int fd, uint32_t fence, const char *what)
{
	struct vgpu_wait w;
	int ret = wait_fence(fd, fence, &w);

	CHECK(ret == 0, "fence %u (%s): %s (device error %#x at offset %#x)", fence, what,
	      strerror(-ret), w.error_code, w.error_offset);
}

/* ---- The scene ------------------------------------------------------ */

#define IMG_W		96
#define IMG_H		96
#define IMG_STRIDE	(IMG_W * 4 + 32)	/* padded rows: the stride matters */

static void make_image(uint8_t *blob)
{
	for (uint32_t y = 0; y < IMG_H; y++) {
		uint32_t *row = (uint32_t *)(blob + y * IMG_STRIDE);

		for (uint32_t x = 0; x < IMG_W; x++) {
			uint32_t r = x * 255 / (IMG_W - 1);
			uint32_t g = y * 255 / (IMG_H - 1);
			uint32_t b = ((x / 12 + y / 12) & 1) ? 0xff : 0x40;

			row[x] = r << 16 | g << 8 | b;
		}
		/* Padding the device must skip. */
		memset(blob + y * IMG_STRIDE + IMG_W * 4, 0xee, IMG_STRIDE - IMG_W * 4);
	}
}

/* Pixels the CPU writes through the mapping (or into the model). */
static void cpu_pattern(uint32_t *fb, uint32_t stride_px, uint32_t width, uint32_t height)
{
	/* A 1-pixel white border around the screen. */
	for (uint32_t x = 0; x < width; x++) {
		fb[x] = 0x00ffffff;
		fb[(height - 1) * stride_px + x] = 0x00ffffff;
	}
	for (uint32_t y = 0; y < height; y++) {
		fb[y * stride_px] = 0x00ffffff;
		fb[y * stride_px + width - 1] = 0x00ffffff;
	}
	/* A yellow X in the 64x64 box at (width - 140, 40). */
	for (uint32_t i = 0; i < 64; i++) {
		fb[(40 + i) * stride_px + width - 140 + i] = 0x00ffff00;
		fb[(40 + i) * stride_px + width - 140 + 63 - i] = 0x00ffff00;
	}
}

static uint32_t checksum(const uint32_t *px, uint32_t stride_px, uint32_t width,
			 uint32_t height)
{
	uint32_t h = 0x811c9dc5;	/* FNV-1a, 32 bits */

	for (uint32_t y = 0; y < height; y++)
		for (uint32_t x = 0; x < width; x++) {
			uint32_t v = px[y * stride_px + x];

			for (int i = 0; i < 4; i++) {
				h ^= (v >> (8 * i)) & 0xff;
				h *= 0x01000193;
			}
		}
	return h;
}

static void usage(void)
{
	fprintf(stderr, "usage: vgpu-demo [-d DEVICE] [-W WIDTH] [-H HEIGHT] [-n] [-r]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	const char *path = "/dev/vgpu0";
	uint32_t width = 640, height = 480;
	int error_tests = 1, reference_only = 0;
	struct model m;
	struct cmdbuf b;
	struct target t = { &m, &b };
	static uint8_t blob[IMG_STRIDE * IMG_H];
	uint32_t fence[4] = { 0 };
	int opt;

	while ((opt = getopt(argc, argv, "d:W:H:nr")) != -1) {
		switch (opt) {
		case 'd': path = optarg; break;
		case 'W': width = strtoul(optarg, NULL, 0); break;
		case 'H': height = strtoul(optarg, NULL, 0); break;
		case 'n': error_tests = 0; break;
		case 'r': reference_only = 1; break;
		default: usage();
		}
	}
	/* The scene needs room for its fixed-position parts. */
	if (width < 420 || height < 400 || width > 4096 || height > 4096)
		usage();

	m.width = width;
	m.height = height;
	m.px = calloc((size_t)width * height, 4);
	if (!m.px)
		return 2;
	make_image(blob);

	int fd = -1;
	uint32_t *fb = MAP_FAILED;
	uint32_t stride = width * 4;
	size_t fb_size = 0;

	if (!reference_only) {
		struct vgpu_info info;
		struct vgpu_mode mode = {
			.width = width, .height = height,
			.format = VGPU_FORMAT_XRGB8888, .flags = VGPU_MODE_CLEAR,
		};

		fd = open(path, O_RDWR | O_CLOEXEC);
		if (fd < 0) {
			fprintf(stderr, "vgpu-demo: open %s: %s\n", path, strerror(errno));
			return 1;
		}
		if (ioctl(fd, VGPU_IOC_INFO, &info) < 0) {
			fprintf(stderr, "vgpu-demo: VGPU_IOC_INFO: %s\n", strerror(errno));
			return 1;
		}
		printf("vgpu-demo: %s: vgpu %u.%u, framebuffer %u KiB, max %ux%u, ring %u, %s\n",
		       path, info.version >> 16, info.version & 0xffff, info.fb_size / 1024,
		       info.max_width, info.max_height, info.ring_size,
		       info.irq_is_msi ? "MSI" : "INTx");
		if (ioctl(fd, VGPU_IOC_SET_MODE, &mode) < 0) {
			fprintf(stderr, "vgpu-demo: VGPU_IOC_SET_MODE %ux%u: %s\n", width, height,
				strerror(errno));
			return 1;
		}
		stride = mode.stride;	/* never width * 4 */
		printf("vgpu-demo: mode %ux%u XRGB8888, stride %u\n", width, height, stride);
		fb_size = info.fb_size;
		fb = mmap(NULL, fb_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
		if (fb == MAP_FAILED) {
			fprintf(stderr, "vgpu-demo: mmap: %s\n", strerror(errno));
			return 1;
		}
	}
	/* SET_MODE with VGPU_MODE_CLEAR: the model starts black, like the screen. */

	/* Buffer 1: background, colour bars, some padding. */
	b.n = 0;
	fill(&t, 0, 0, width, height, 0x00203040);
	for (uint32_t i = 0; i < 8; i++) {
		static const uint32_t bars[8] = {
			0x00ffffff, 0x00ffff00, 0x0000ffff, 0x0000ff00,
			0x00ff00ff, 0x00ff0000, 0x000000ff, 0x00000000,
		};
		fill(&t, 20 + i * 40, 20, 40, 200, bars[i]);
	}
	nop(&b, 3);
	fill(&t, 20, 230, 320, 0, 0x00ff0000);	/* empty: draws nothing, still valid */
	if (!reference_only)
		submit_and_check(fd, &b, NULL, 0, "background", &fence[0]);

	/* Buffer 2: the image, twice: whole, and a 32x32 piece of it. */
	b.n = 0;
	upload(&t, 20, 260, IMG_W, IMG_H, blob, 0, IMG_STRIDE);
	upload(&t, 140, 260, 32, 32, blob, 16 * IMG_STRIDE + 16 * 4, IMG_STRIDE);
	if (!reference_only)
		submit_and_check(fd, &b, blob, sizeof(blob), "image upload", &fence[1]);

	/* Buffer 3: copies, the second overlapping its source (memmove). */
	b.n = 0;
	copy(&t, 20, 260, 200, 270, IMG_W, IMG_H);
	copy(&t, 200, 270, 210, 280, IMG_W, IMG_H);
	if (!reference_only)
		submit_and_check(fd, &b, NULL, 0, "copies", &fence[2]);

	/*
	 * Pixels from the CPU, through the mapping. They go on top of what
	 * the engine drew, so wait for the engine first (nothing orders CPU
	 * writes against the engine except the fence).
	 */
	if (!reference_only) {
		for (int i = 0; i < 3; i++)
			wait_and_check(fd, fence[i], "scene");
		cpu_pattern(fb, stride / 4, width, height);
		/*
		 * The mapping is write-combining: drain the CPU's WC buffers
		 * before asking the engine to read these pixels.
		 */
		__sync_synchronize();
	}
	cpu_pattern(m.px, width, width, height);

	/* Buffer 4: copy the CPU-drawn X elsewhere: the engine sees CPU writes. */
	b.n = 0;
	copy(&t, width - 140, 40, width - 140, height - 100, 64, 64);
	if (!reference_only) {
		submit_and_check(fd, &b, NULL, 0, "copy of CPU pixels", &fence[3]);
		wait_and_check(fd, fence[3], "copy of CPU pixels");
	}

	uint32_t want = checksum(m.px, width, width, height);

	if (reference_only) {
		printf("vgpu-demo: expected checksum for %ux%u: 0x%08x\n", width, height, want);
		return 0;
	}

	/* Every visible pixel, against the model (ignoring the X byte). */
	unsigned long bad = 0;

	for (uint32_t y = 0; y < height; y++)
		for (uint32_t x = 0; x < width; x++) {
			uint32_t got = fb[y * (stride / 4) + x] & 0x00ffffff;
			uint32_t exp = m.px[y * width + x] & 0x00ffffff;

			if (got != exp && bad++ < 5)
				fprintf(stderr, "vgpu-demo: pixel (%u,%u) is %06x, expected %06x\n",
					x, y, got, exp);
		}
	CHECK(bad == 0, "%lu of %u pixels differ from the model", bad, width * height);

	uint32_t got = checksum(fb, stride / 4, width, height);

	printf("vgpu-demo: framebuffer %ux%u stride %u checksum 0x%08x (expected 0x%08x)\n",
	       width, height, stride, got, want);
	CHECK(got == want, "checksum mismatch");

	if (error_tests) {
		struct vgpu_wait w;
		uint32_t f;
		int ret;

		/* The driver refuses FENCE commands: it owns the fence numbers. */
		b.n = 0;
		{
			uint32_t c[] = { VGPU_CMD_HEADER(VGPU_OP_FENCE, 2), 1234 };

			emit(&b, c, 2);
		}
		ret = submit(fd, &b, NULL, 0, &f);
		CHECK(ret == -EINVAL, "a FENCE command was not refused (%s)", strerror(-ret));

		/* ... and image sources outside the data blob. */
		b.n = 0;
		{
			uint32_t c[] = { VGPU_CMD_HEADER(VGPU_OP_UPLOAD_IMAGE, 8),
					 0, 0, IMG_W, IMG_H, 64, 0, IMG_STRIDE };

			emit(&b, c, 8);
		}
		ret = submit(fd, &b, blob, sizeof(blob), &f);
		CHECK(ret == -EINVAL, "an out-of-blob image source was not refused (%s)",
		      strerror(-ret));

		/* The device rejects a rectangle off screen: EIO, nothing drawn. */
		b.n = 0;
		nop(&b, 2);
		{
			uint32_t c[] = { VGPU_CMD_HEADER(VGPU_OP_FILL_RECT, 6),
					 width - 10, 0, 20, 10, 0x00ff0000 };

			emit(&b, c, 6);
		}
		ret = submit(fd, &b, NULL, 0, &f);
		CHECK(ret == 0, "submit of the off-screen fill: %s", strerror(-ret));
		if (ret == 0) {
			ret = wait_fence(fd, f, &w);
			CHECK(ret == -EIO && w.error_code == ERR_RECT_OUT_OF_BOUNDS &&
			      w.error_offset == 8,
			      "off-screen fill: got %s, error %#x at offset %#x; expected EIO, %#x at 0x8",
			      strerror(-ret), w.error_code, w.error_offset, ERR_RECT_OUT_OF_BOUNDS);
			if (ret == -EIO)
				printf("vgpu-demo: off-screen fill rejected as expected: device error %#x at offset %#x\n",
				       w.error_code, w.error_offset);
		}

		/* The engine goes on: a harmless buffer must complete. */
		b.n = 0;
		nop(&b, 4);
		ret = submit(fd, &b, NULL, 0, &f);
		CHECK(ret == 0, "submit after the error: %s", strerror(-ret));
		if (ret == 0)
			wait_and_check(fd, f, "after the error");
		CHECK(checksum(fb, stride / 4, width, height) == want,
		      "the rejected buffer changed the framebuffer");
	}

	struct vgpu_info info;

	if (ioctl(fd, VGPU_IOC_INFO, &info) == 0)
		printf("vgpu-demo: fences submitted %u, retired %u; device errors handled %u\n",
		       info.last_submitted, info.last_retired, info.errors);

	munmap(fb, fb_size);
	close(fd);
	free(m.px);
	if (failures) {
		printf("vgpu-demo: %d check(s) FAILED\n", failures);
		return 1;
	}
	printf("vgpu-demo: all checks passed\n");
	return 0;
}
