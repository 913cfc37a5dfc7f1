#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* imgnorm._kernels: the optional C accelerators.
 *
 * u8_hist, u16_hist: the exact per-channel histogram of interleaved 8- or
 * 16-bit pixels in one pass (the sums, minima, maxima and percentiles of a
 * stats document all come from it).
 * lut_apply: scale 8- or 16-bit pixels by looking each level up in a
 * per-channel table (the table holds what the float64 formula gives).
 *
 * Each has a numpy fallback giving identical results (tests compare them),
 * and releases the GIL, so it runs beside reading and writing threads.
 */
#define MAXC 4

/* u8_hist: add the per-channel histograms of interleaved uint8 pixels to
 * H[c * 256 + v] (uint64).  Four sub-histograms (one per pixel of a group of
 * four) keep consecutive increments of one bin from waiting on each other;
 * their 32-bit counts are flushed to 64 bits before they could overflow.
 * From the counts come the exact sums, minima, maxima and percentiles. */
#define HFLUSH ((Py_ssize_t)1 << 30)  /* groups of four pixels per flush */

#define HIST_LOOP(CC)                                                            \
    for (; i + 4 * (CC) <= stop; i += 4 * (CC)) {                               \
        for (int k = 0; k < 4; k++)                                              \
            for (int c = 0; c < (CC); c++) h[k][c][p[i + k * (CC) + c]]++;       \
    }

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
__attribute__((target_clones("avx2", "default")))
#endif
static void u8_hist(const uint8_t *p, Py_ssize_t n, int C, uint64_t *H) {
    uint32_t h[4][MAXC][256];
    Py_ssize_t i = 0, whole = n - n % (4 * C);
    while (i < whole) {
        Py_ssize_t stop = whole - i > HFLUSH * 4 * C ? i + HFLUSH * 4 * C : whole;
        memset(h, 0, sizeof h);
        switch (C) {
            case 1: HIST_LOOP(1); break;
            case 2: HIST_LOOP(2); break;
            case 3: HIST_LOOP(3); break;
            default: HIST_LOOP(4); break;
        }
        for (int k = 0; k < 4; k++)
            for (int c = 0; c < C; c++)
                for (int v = 0; v < 256; v++) H[c * 256 + v] += h[k][c][v];
    }
    for (; i < n; i++) H[(i % C) * 256 + p[i]]++;
}

/* u16_hist: the same for uint16 pixels, 65,536 bins a channel, counted
 * straight into the 64-bit histogram (four sub-tables would not stay in cache). */
static void u16_hist(const uint16_t *p, Py_ssize_t n, int C, uint64_t *H) {
    if (C == 1) {
        for (Py_ssize_t i = 0; i < n; i++) H[p[i]]++;
        return;
    }
    for (Py_ssize_t i = 0; i < n; i += C)
        for (int c = 0; c < C; c++) H[((Py_ssize_t)c << 16) + p[i + c]]++;
}

static PyObject *hist_call(PyObject *args, int itemsize) {
    Py_buffer buf, hb; int C;
    if (!PyArg_ParseTuple(args, "y*iw*", &buf, &C, &hb)) return NULL;
    Py_ssize_t levels = (Py_ssize_t)1 << (8 * itemsize), n = buf.len / itemsize;
    const char *bad = NULL;
    if (C < 1 || C > MAXC || buf.len % itemsize || n % C) bad = "channels must be 1..4 and divide the pixels";
    else if (hb.len != (Py_ssize_t)C * levels * 8) bad = "the histogram must be channels * levels uint64";
    if (bad) {
        PyBuffer_Release(&buf); PyBuffer_Release(&hb);
        PyErr_SetString(PyExc_ValueError, bad);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    if (itemsize == 1) u8_hist((const uint8_t *)buf.buf, n, C, (uint64_t *)hb.buf);
    else u16_hist((const uint16_t *)buf.buf, n, C, (uint64_t *)hb.buf);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&buf); PyBuffer_Release(&hb);
    Py_RETURN_NONE;
}

static PyObject *py_u16_hist(PyObject *self, PyObject *args) { return hist_call(args, 2); }

static PyObject *py_u8_hist(PyObject *self, PyObject *args) { return hist_call(args, 1); }

/* out[i] = table[(i % C) * levels + x[i]] for T-sized table entries (the bits
 * of float16/32/64 values: a lookup copies them, it never does arithmetic).
 * The table covers every level of the input type, so no index is checked. */
#define LUT_LOOP(IN, T)                                                         \
    do {                                                                        \
        const IN *xi = (const IN *)x; const T *t = (const T *)table; T *o = (T *)out; \
        if (C == 1) {                                                           \
            for (Py_ssize_t i = 0; i < n; i++) o[i] = t[xi[i]];                 \
        } else if (C == 3) {                                                    \
            const T *t1 = t + levels, *t2 = t + 2 * levels;                     \
            for (Py_ssize_t i = 0; i < n; i += 3) {                             \
                o[i] = t[xi[i]]; o[i + 1] = t1[xi[i + 1]]; o[i + 2] = t2[xi[i + 2]]; \
            }                                                                   \
        } else {                                                                \
            for (Py_ssize_t i = 0; i < n; i += C)                               \
                for (int c = 0; c < C; c++) o[i + c] = t[c * levels + xi[i + c]]; \
        }                                                                       \
    } while (0)

static void lut_apply(const void *x, int in_size, Py_ssize_t n, int C, const void *table,
                      Py_ssize_t levels, int out_size, void *out) {
    if (in_size == 1) {
        if (out_size == 4) LUT_LOOP(uint8_t, uint32_t);
        else if (out_size == 2) LUT_LOOP(uint8_t, uint16_t);
        else LUT_LOOP(uint8_t, uint64_t);
    } else {
        if (out_size == 4) LUT_LOOP(uint16_t, uint32_t);
        else if (out_size == 2) LUT_LOOP(uint16_t, uint16_t);
        else LUT_LOOP(uint16_t, uint64_t);
    }
}

static PyObject *py_lut_apply(PyObject *self, PyObject *args) {
    /* lut_apply(x, in_itemsize, table, levels, channels, out, out_itemsize) */
    Py_buffer xb, tb, ob; int in_size, C, out_size; Py_ssize_t levels;
    if (!PyArg_ParseTuple(args, "y*iy*niw*i", &xb, &in_size, &tb, &levels, &C, &ob, &out_size)) return NULL;
    const char *bad = NULL;
    if (in_size != 1 && in_size != 2) bad = "input items must be 1 or 2 bytes";
    else if (out_size != 2 && out_size != 4 && out_size != 8) bad = "output items must be 2, 4 or 8 bytes";
    else if (C < 1) bad = "channels must be positive";
    else if (levels != (Py_ssize_t)1 << (8 * in_size)) bad = "the table must cover every input level";
    else if (xb.len % ((Py_ssize_t)in_size * C)) bad = "input length is not whole pixels";
    else if (tb.len != levels * C * out_size) bad = "table size is not levels * channels";
    else if (ob.len != xb.len / in_size * out_size) bad = "output size does not match the input";
    if (bad) {
        PyBuffer_Release(&xb); PyBuffer_Release(&tb); PyBuffer_Release(&ob);
        PyErr_SetString(PyExc_ValueError, bad);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    lut_apply(xb.buf, in_size, xb.len / in_size, C, tb.buf, levels, out_size, ob.buf);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&xb); PyBuffer_Release(&tb); PyBuffer_Release(&ob);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"u8_hist", py_u8_hist, METH_VARARGS, "Add the per-channel histograms of interleaved uint8 pixels into hist."},
    {"u16_hist", py_u16_hist, METH_VARARGS, "Add the per-channel histograms of interleaved uint16 pixels into hist."},
    {"lut_apply", py_lut_apply, METH_VARARGS, "Look 8/16-bit pixels up in a per-channel table, into out."},
    {NULL, NULL, 0, NULL}
};
static struct PyModuleDef mod = {PyModuleDef_HEAD_INIT, "_kernels", NULL, -1, methods};
PyMODINIT_FUNC PyInit__kernels(void) { return PyModule_Create(&mod); }
