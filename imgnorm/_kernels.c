#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* imgnorm._kernels: the optional C accelerators.
 *
 * u8_stats: exact per-channel sum, sum of squares, min and max of
 * interleaved uint8 pixels in one pass.
 * lut_apply: scale 8- or 16-bit pixels by looking each level up in a
 * per-channel table (the table holds what the float64 formula gives).
 *
 * Both have numpy fallbacks giving identical results (tests compare them).
 * Both release the GIL, so they run beside reading and writing threads.  Accumulators are per byte position over a
 * period of 16 * channels bytes, so the inner loop has a fixed stride the
 * compiler vectorizes; 32-bit lanes are flushed to 64 bits before they can
 * overflow, so the sums are exact for any buffer size.
 */
#define LANES 16
#define MAXC 4
#define FLUSH 65536  /* groups per flush: 65536 * 255^2 < 2^32 */

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
/* One binary, the best vector unit at run time (dispatch through an ifunc). */
__attribute__((target_clones("avx2", "default")))
#endif
static void u8_stats(const uint8_t *p, Py_ssize_t n, int C,
                     uint64_t *S, uint64_t *Q, uint8_t *MN, uint8_t *MX) {
    const Py_ssize_t P = (Py_ssize_t)C * LANES;
    uint32_t s[MAXC * LANES], q[MAXC * LANES];
    uint8_t mn[MAXC * LANES], mx[MAXC * LANES];
    uint64_t s64[MAXC * LANES], q64[MAXC * LANES];
    memset(s64, 0, sizeof s64); memset(q64, 0, sizeof q64);
    memset(mn, 255, sizeof mn); memset(mx, 0, sizeof mx);
    Py_ssize_t groups = n / P, g = 0;
    while (g < groups) {
        Py_ssize_t end = g + FLUSH < groups ? g + FLUSH : groups;
        memset(s, 0, sizeof s); memset(q, 0, sizeof q);
        for (; g < end; g++) {
            const uint8_t *b = p + g * P;
            for (Py_ssize_t j = 0; j < P; j++) {
                uint16_t v = b[j];
                s[j] += v;
                q[j] += (uint16_t)(v * v);
                mn[j] = b[j] < mn[j] ? b[j] : mn[j];
                mx[j] = b[j] > mx[j] ? b[j] : mx[j];
            }
        }
        for (Py_ssize_t j = 0; j < P; j++) { s64[j] += s[j]; q64[j] += q[j]; }
    }
    for (int c = 0; c < C; c++) { S[c] = 0; Q[c] = 0; MN[c] = 255; MX[c] = 0; }
    for (Py_ssize_t j = 0; j < P; j++) {
        int c = (int)(j % C);
        S[c] += s64[j]; Q[c] += q64[j];
        if (mn[j] < MN[c]) MN[c] = mn[j];
        if (mx[j] > MX[c]) MX[c] = mx[j];
    }
    for (Py_ssize_t i = groups * P; i < n; i++) {
        int c = (int)((i - groups * P) % C);
        uint32_t v = p[i];
        S[c] += v; Q[c] += v * v;
        if (p[i] < MN[c]) MN[c] = p[i];
        if (p[i] > MX[c]) MX[c] = p[i];
    }
}

static PyObject *py_u8_stats(PyObject *self, PyObject *args) {
    Py_buffer buf; int C;
    if (!PyArg_ParseTuple(args, "y*i", &buf, &C)) return NULL;
    if (C < 1 || C > MAXC || buf.len % C) {
        PyBuffer_Release(&buf);
        PyErr_SetString(PyExc_ValueError, "channels must be 1..4 and divide the buffer length");
        return NULL;
    }
    uint64_t S[MAXC], Q[MAXC]; uint8_t MN[MAXC], MX[MAXC];
    Py_BEGIN_ALLOW_THREADS
    u8_stats((const uint8_t *)buf.buf, buf.len, C, S, Q, MN, MX);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&buf);
    PyObject *out = PyTuple_New(4);
    PyObject *ls = PyList_New(C), *lq = PyList_New(C), *lmn = PyList_New(C), *lmx = PyList_New(C);
    for (int c = 0; c < C; c++) {
        PyList_SET_ITEM(ls, c, PyLong_FromUnsignedLongLong(S[c]));
        PyList_SET_ITEM(lq, c, PyLong_FromUnsignedLongLong(Q[c]));
        PyList_SET_ITEM(lmn, c, PyLong_FromLong(MN[c]));
        PyList_SET_ITEM(lmx, c, PyLong_FromLong(MX[c]));
    }
    PyTuple_SET_ITEM(out, 0, ls); PyTuple_SET_ITEM(out, 1, lq);
    PyTuple_SET_ITEM(out, 2, lmn); PyTuple_SET_ITEM(out, 3, lmx);
    return out;
}

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
    {"u8_stats", py_u8_stats, METH_VARARGS, "Exact per-channel (sum, sum_sq, min, max) of interleaved uint8 pixels."},
    {"lut_apply", py_lut_apply, METH_VARARGS, "Look 8/16-bit pixels up in a per-channel table, into out."},
    {NULL, NULL, 0, NULL}
};
static struct PyModuleDef mod = {PyModuleDef_HEAD_INIT, "_kernels", NULL, -1, methods};
PyMODINIT_FUNC PyInit__kernels(void) { return PyModule_Create(&mod); }
