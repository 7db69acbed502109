# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The book's level store and level loop, compiled (Cython): ``app.book_core`` in C.

The same API and results as the reference core ``app/book_core.py`` (read it first: its
docstrings hold for this one), with each side's levels in blocks of C arrays — the ranks as
doubles, beside them the price texts and the size texts, a short size copied into the block
itself (a ``(price, size)`` tuple is made only when a level is read) — the levels found by a C
binary search, the whole level loop of an update in C, and a venue's levels read in place from
the frame's bytes (:class:`RawLevels`).
Built by ``make install`` (``setup.py``); ``app.book`` runs it when it is built (``BOOK_CORE``).
Change one, change the other.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.ref cimport Py_INCREF, Py_XDECREF, PyObject
from libc.math cimport INFINITY
from libc.string cimport memcmp, memcpy, memmove

from app.errors import FrameError


cdef extern from "Python.h":
    void PyObject_GC_UnTrack(void* op)
    bint PyUnicode_IS_COMPACT_ASCII(object op)
    Py_ssize_t PyUnicode_GET_LENGTH(object op)
    void* PyUnicode_DATA(object op)
    bytes PyUnicode_AsUTF8String(object op)
    object PyBytes_FromStringAndSize(const char* v, Py_ssize_t n)
    char* PyBytes_AS_STRING(object op)
    object PyUnicode_New(Py_ssize_t size, unsigned int maxchar)


cdef extern from *:
    """
    #define BOOKSTREAM_PREFETCH(p) __builtin_prefetch((const void*)(p))
    """
    void _prefetch "BOOKSTREAM_PREFETCH"(const void* p) noexcept nogil


cdef inline object _untracked(object value):
    """``value``; when it is a tuple of text, bytes or None, out of the cyclic collector's sight:
    such a tuple can hold no reference cycle, and CPython would untrack it anyway at the first
    collection that walked it. The levels read and the rows a commit takes are such tuples, held
    until the commit is done; tracked, every one made since the last young collection is walked
    by it (the books held one per level before their texts went to C arrays: tens of thousands
    at a few thousand frames a second, that collection's whole cost)."""
    cdef object item
    if type(value) is not tuple:
        return value
    for item in <tuple>value:
        if not (type(item) is str or type(item) is bytes or item is None):
            return value
    PyObject_GC_UnTrack(<void*>value)
    return value


cdef inline tuple _pair(object first, object second):
    return _untracked((first, second))


cdef inline bytes _row_key(bytes start, object price):
    """``start + price.encode()``, in one allocation when the price is ASCII (as a venue's are)."""
    cdef Py_ssize_t head, n
    if type(price) is not str or not PyUnicode_IS_COMPACT_ASCII(price):
        return start + PyUnicode_AsUTF8String(price)
    head, n = len(start), PyUnicode_GET_LENGTH(price)
    key = PyBytes_FromStringAndSize(NULL, head + n)
    memcpy(PyBytes_AS_STRING(key), <const char*>start, head)
    memcpy(PyBytes_AS_STRING(key) + head, PyUnicode_DATA(price), n)
    return <bytes>key

NAME = "compiled"

# 10**k for k ≤ 22: every one exact in a double
cdef double[23] _POW10
_POW10[0] = 1.0
for _k in range(1, 23):
    _POW10[_k] = _POW10[_k - 1] * 10.0

#: A side's removed price texts are made unique when they reach this many (or four times as many
#: as there were left the last time): between two takes — a commit's, every 100 ms, or a failing
#: commit's retries — at most four times the distinct prices removed. Not fewer: a worker catching
#: up removes thousands of levels of a book between two commits, and making them unique each
#: time cost as much as the dict it replaced.
cdef Py_ssize_t _GONE_MIN = 65536

cdef unsigned long long _EXACT = 1ULL << 53  # every integer up to 2**53 is exact in a double


cdef inline bint _plain_decimal(object text, double* out) noexcept:
    """True, with ``float(text)`` in ``out``, when ``text`` is plain decimal ASCII (see
    :func:`_plain_chars`); False for anything else: the caller asks ``float``. A venue's prices
    and sizes are plain decimals: this skips making a float object twice per level."""
    if type(text) is not str or not PyUnicode_IS_COMPACT_ASCII(text):
        return False
    return _plain_chars(<const unsigned char*>PyUnicode_DATA(text), PyUnicode_GET_LENGTH(text), out)


cdef inline bint _plain_chars(const unsigned char* s, Py_ssize_t n, double* out) noexcept:
    """True, with the value in ``out``, when the ``n`` characters at ``s`` are a plain decimal
    (see :func:`_decimal`)."""
    return _decimal(s, n, out) == n


cdef inline Py_ssize_t _decimal(const unsigned char* s, Py_ssize_t n, double* out) noexcept:
    """The length of the run of digits and points at ``s`` (within ``n``), with its value in
    ``out``, when the run is a plain decimal: at most one point, at least one digit, digits that
    make an integer m ≤ 2**53 and k ≤ 22 of them after the point. Then m and 10**k are exact
    doubles and the one correctly rounded division m / 10**k is the correctly rounded value of
    the text, the double ``float`` gives (Clinger's fast path). -1 when the run is not one (two
    points, no digit, more digits): the caller asks ``float``, or reads the frame the general way."""
    cdef Py_ssize_t i = 0
    cdef unsigned long long m = 0
    cdef int frac = -1, digits = 0
    cdef unsigned char c
    while i < n:
        c = s[i]
        if 48 <= c <= 57:
            if m > 100000000000000000ULL:  # one more digit could overflow: not plain enough
                return -1
            m = m * 10 + (c - 48)
            digits += 1
            if frac >= 0:
                frac += 1
        elif c == 46:  # "."
            if frac >= 0:
                return -1
            frac = 0
        else:
            break
        i += 1
    if digits == 0 or m > _EXACT or frac > 22:
        return -1
    out[0] = <double>m / _POW10[frac] if frac > 0 else <double>m
    return i


cpdef double parse_key(price) except? -1.0:
    """A price's sort key; FrameError ``bad-price`` unless a finite positive number."""
    cdef double value
    if _plain_decimal(price, &value):
        if value > 0:
            return value
        raise FrameError("bad-price", price[:30])
    try:
        value = float(price)
    except ValueError:
        raise FrameError("bad-price", price[:30]) from None
    if not 0 < value < INFINITY:  # NaN fails too
        raise FrameError("bad-price", price[:30])
    return value


cpdef bint parse_zero(size) except -1:
    """Whether a size deletes its level; FrameError ``bad-size`` unless finite and ≥ 0."""
    cdef double value
    if _plain_decimal(size, &value):
        return value == 0
    try:
        value = float(size)
    except ValueError:
        raise FrameError("bad-size", size[:30]) from None
    if not 0 <= value < INFINITY:
        raise FrameError("bad-size", size[:30])
    return value == 0


#: Levels a block holds at most. A side is a sorted run of blocks (the best level last in the
#: last one): a level inserted or removed shifts only the rest of its block, not the rest of the
#: side. With one flat array, a Binance USD-M book (~3,500 levels a side, a third of its level
#: updates inserting or removing one, half of them more than 190 levels from the top) moved 13 kB
#: of memory a level inserted or removed: ~10 % of a worker's CPU (README "Where the time goes").
#: 64 rather than 128 since the sizes went inline (49 bytes a level to shift, not 25).
cdef enum:
    BLOCK = 64
    #: A size text of at most this many ASCII characters is kept in the block itself (any other
    #: as a str): a level's new size is compared with and written over its old one there, and no
    #: str is made or freed for it. A str per size, cold by the level's next change, was half
    #: the level loop's time (the miss on its header) before the frees and allocations.
    SZ_INLINE = 23
    SZ_OBJECT = 255  # ``szn`` of a size kept as a str in ``sz``


cdef struct Block:
    Py_ssize_t n
    double rank[BLOCK]  # ascending: the price's float for bids, its negation for asks
    PyObject* px[BLOCK]  # beside each rank: the level's price text (a reference held)
    PyObject* sz[BLOCK]  # its size text when not inline (a reference held), else NULL
    unsigned char dirty[BLOCK]  # 1 if the level changed since the last take_rows
    unsigned char szn[BLOCK]  # the inline size text's length, or SZ_OBJECT
    char szt[BLOCK * SZ_INLINE]  # the inline size texts, SZ_INLINE characters a level


cdef Block* _new_block() except NULL:
    cdef Block* blk = <Block*>PyMem_Malloc(sizeof(Block))
    if blk is NULL:
        raise MemoryError()
    blk.n = 0
    return blk


cdef inline void _move(Block* dst, Py_ssize_t to, Block* src, Py_ssize_t at, Py_ssize_t count) noexcept:
    """``count`` entries of ``src`` from ``at`` to ``dst`` at ``to`` (overlapping or not)."""
    memmove(&dst.rank[to], &src.rank[at], count * sizeof(double))
    memmove(&dst.px[to], &src.px[at], count * sizeof(PyObject*))
    memmove(&dst.sz[to], &src.sz[at], count * sizeof(PyObject*))
    memmove(&dst.dirty[to], &src.dirty[at], count)
    memmove(&dst.szn[to], &src.szn[at], count)
    memmove(&dst.szt[to * SZ_INLINE], &src.szt[at * SZ_INLINE], count * SZ_INLINE)


cdef inline int _size_from_chars(Block* blk, Py_ssize_t i, const unsigned char* s, Py_ssize_t n) except -1:
    """Level ``i`` of ``blk`` (its old size released) takes the ASCII size text at ``s``."""
    if n <= SZ_INLINE:
        memcpy(&blk.szt[i * SZ_INLINE], s, n)
        blk.szn[i], blk.sz[i] = <unsigned char>n, NULL
    else:
        text = _ascii(s, n)
        Py_INCREF(text)
        blk.szn[i], blk.sz[i] = SZ_OBJECT, <PyObject*>text
    return 0


cdef inline void _size_from_text(Block* blk, Py_ssize_t i, object size) noexcept:
    """Level ``i`` of ``blk`` (its old size released) takes the size text ``size`` (a str; any
    other object is kept as it is, as the reference keeps it)."""
    if type(size) is str and PyUnicode_IS_COMPACT_ASCII(size) and PyUnicode_GET_LENGTH(size) <= SZ_INLINE:
        _size_from_chars(blk, i, <const unsigned char*>PyUnicode_DATA(size), PyUnicode_GET_LENGTH(size))
    else:
        Py_INCREF(size)
        blk.szn[i], blk.sz[i] = SZ_OBJECT, <PyObject*>size


cdef inline void _size_release(Block* blk, Py_ssize_t i) noexcept:
    """Let go of level ``i``'s size (left empty until it takes another)."""
    if blk.szn[i] == SZ_OBJECT:
        Py_XDECREF(blk.sz[i])
        blk.sz[i] = NULL
    blk.szn[i] = 0


cdef inline object _size_text(Block* blk, Py_ssize_t i):
    if blk.szn[i] == SZ_OBJECT:
        return <object>blk.sz[i]
    return _ascii(<const unsigned char*>&blk.szt[i * SZ_INLINE], blk.szn[i])


cdef inline bytes _size_bytes(Block* blk, Py_ssize_t i):
    """The size text as UTF-8 (a table row's value)."""
    if blk.szn[i] == SZ_OBJECT:
        return PyUnicode_AsUTF8String(<object>blk.sz[i])
    return <bytes>PyBytes_FromStringAndSize(&blk.szt[i * SZ_INLINE], blk.szn[i])


cdef inline bint _size_is_chars(Block* blk, Py_ssize_t i, const unsigned char* s, Py_ssize_t n) except -1:
    """Whether level ``i``'s size text is the ``n`` ASCII characters at ``s``."""
    if blk.szn[i] == SZ_OBJECT:
        return _same_text(<object>blk.sz[i], s, n)
    return blk.szn[i] == n and memcmp(&blk.szt[i * SZ_INLINE], s, n) == 0


cdef inline bint _size_is(Block* blk, Py_ssize_t i, object size) except -1:
    """Whether level ``i``'s size text is ``size``."""
    if blk.szn[i] == SZ_OBJECT:
        return <object>blk.sz[i] == size
    if type(size) is str and PyUnicode_IS_COMPACT_ASCII(size):
        return _size_is_chars(blk, i, <const unsigned char*>PyUnicode_DATA(size), PyUnicode_GET_LENGTH(size))
    return _size_text(blk, i) == size


cdef inline Py_ssize_t _bisect(const double* ranks, Py_ssize_t hi, double rank) noexcept:
    """The first index below ``hi`` whose rank is ≥ ``rank``, else ``hi`` (bisect_left)."""
    cdef Py_ssize_t lo = 0, mid
    while lo < hi:
        mid = (lo + hi) >> 1
        if ranks[mid] < rank:
            lo = mid + 1
        else:
            hi = mid
    return lo


# -- exact band sums (Side.band_sums) ------------------------------------------------------
cdef extern from *:
    """
    typedef __int128 bookstream_i128;
    """
    ctypedef long long i128 "bookstream_i128"

cdef enum:
    _SCALE = 18
    BAND_MAX = 32  # bounds one call takes at most
#: Decimals of the integers Side.band_sums compares and sums (value × 10**BAND_SCALE).
BAND_SCALE = _SCALE
cdef i128 _BAND_LIMIT = <i128>10000000000000000000ULL * <i128>1000000000000000ULL  # 10**34
cdef i128[_SCALE + 1] _POW10_128
_POW10_128[0] = 1
for _k in range(1, _SCALE + 1):
    _POW10_128[_k] = _POW10_128[_k - 1] * 10


cdef inline bint _scaled(const unsigned char* s, Py_ssize_t n, i128* out) noexcept:
    """The plain decimal text at ``s`` (digits and at most one point: at least one digit, at most
    19 before the point and _SCALE after it) × 10**_SCALE in ``out``; False for anything else."""
    cdef Py_ssize_t i
    cdef i128 v = 0
    cdef int frac = -1, whole = 0
    cdef unsigned char c
    for i in range(n):
        c = s[i]
        if 48 <= c <= 57:
            if frac >= 0:
                frac += 1
                if frac > _SCALE:
                    return False
            else:
                whole += 1
                if whole > 19:
                    return False
            v = v * 10 + (c - 48)
        elif c == 46 and frac < 0:  # "."
            frac = 0
        else:
            return False
    if whole + (frac if frac > 0 else 0) == 0:
        return False
    out[0] = v * _POW10_128[_SCALE - (frac if frac > 0 else 0)]
    return True


cdef inline bint _scaled_text(object text, i128* out) noexcept:
    if type(text) is not str or not PyUnicode_IS_COMPACT_ASCII(text):
        return False
    return _scaled(<const unsigned char*>PyUnicode_DATA(text), PyUnicode_GET_LENGTH(text), out)


cdef inline bint _i128_of(object value, i128* out) except -1:
    """A Python int in [0, 2**126) into ``out``; False for any other value."""
    if type(value) is not int or value < 0 or value >= (1 << 126):
        return False
    out[0] = ((<i128>(<unsigned long long>(value >> 64))) << 64) | <i128>(<unsigned long long>(value & 0xFFFFFFFFFFFFFFFF))
    return True


cdef inline object _int_of(i128 value):
    """A non-negative 128-bit integer as a Python int."""
    return ((<object>(<unsigned long long>(value >> 64))) << 64) | <object>(<unsigned long long>(value & <i128>0xFFFFFFFFFFFFFFFFULL))


cdef class Side:
    """One side of a book: price key → (price text, size text), sorted, the best last."""

    cdef Block** _blocks  # in rank order, none empty
    cdef double* _last  # beside each block: the rank of its last level (the block's search key)
    cdef Py_ssize_t _nb, _bcap, _n, _ndirty
    cdef list _gone  # the price texts of the levels removed since the last take_rows
    cdef Py_ssize_t _gone_limit  # _gone is made unique when it reaches this length
    cdef readonly bint is_bid

    def __cinit__(self, bint is_bid, levels=None):
        self.is_bid = is_bid
        self._gone = []
        self._gone_limit = _GONE_MIN
        self._blocks = NULL
        self._last = NULL
        self._nb = self._bcap = self._n = self._ndirty = 0

    def __init__(self, bint is_bid, levels=None):
        cdef double key
        cdef Block* blk = NULL
        if not levels:
            return
        for key in sorted(levels, reverse=not is_bid):  # blocks filled to 3/4: room to insert
            if blk is NULL or blk.n == BLOCK * 3 // 4:
                blk = _new_block()
                self._add_block(self._nb, blk)
            price, size = levels[key]
            Py_INCREF(price)
            blk.px[blk.n] = <PyObject*>price
            _size_from_text(blk, blk.n, size)
            blk.rank[blk.n], blk.dirty[blk.n] = (key if is_bid else -key), 0
            blk.n += 1
            self._last[self._nb - 1] = blk.rank[blk.n - 1]
            self._n += 1

    def __dealloc__(self):
        cdef Py_ssize_t b, i
        for b in range(self._nb):
            for i in range(self._blocks[b].n):
                Py_XDECREF(self._blocks[b].px[i])
                _size_release(self._blocks[b], i)
            PyMem_Free(self._blocks[b])
        PyMem_Free(self._blocks)
        PyMem_Free(self._last)

    cdef int _add_block(self, Py_ssize_t b, Block* blk) except -1:
        """``blk`` becomes block ``b`` (its ``_last`` set by the caller)."""
        cdef Py_ssize_t cap
        cdef void* grown
        if self._nb == self._bcap:
            cap = 2 * self._bcap if self._bcap else 8
            grown = PyMem_Realloc(self._blocks, cap * sizeof(Block*))
            if grown is NULL:
                PyMem_Free(blk)
                raise MemoryError()
            self._blocks = <Block**>grown
            grown = PyMem_Realloc(self._last, cap * sizeof(double))
            if grown is NULL:
                PyMem_Free(blk)
                raise MemoryError()
            self._last, self._bcap = <double*>grown, cap
        memmove(&self._blocks[b + 1], &self._blocks[b], (self._nb - b) * sizeof(Block*))
        memmove(&self._last[b + 1], &self._last[b], (self._nb - b) * sizeof(double))
        self._blocks[b] = blk
        self._nb += 1
        return 0

    cdef void _drop_block(self, Py_ssize_t b) noexcept:
        """Free block ``b`` (its levels already moved or released)."""
        PyMem_Free(self._blocks[b])
        memmove(&self._blocks[b], &self._blocks[b + 1], (self._nb - b - 1) * sizeof(Block*))
        memmove(&self._last[b], &self._last[b + 1], (self._nb - b - 1) * sizeof(double))
        self._nb -= 1

    cdef inline void _mark(self, Block* blk, Py_ssize_t i) noexcept:
        if not blk.dirty[i]:
            blk.dirty[i] = 1
            self._ndirty += 1

    cdef int _forget(self, object price) except -1:
        """A level of ``price`` (text) left the side: its row is deleted at the next take."""
        self._gone.append(price)
        if len(self._gone) >= self._gone_limit:  # a level that comes and goes between two takes
            self._gone = list(set(self._gone))  # (commits failing for a while) is kept once
            self._gone_limit = max(_GONE_MIN, 4 * len(self._gone))
        return 0

    cdef inline Py_ssize_t _find(self, double rank, Py_ssize_t* at) noexcept:
        """The place of ``rank`` (bisect_left): the block, and in ``at`` the index in it; a rank
        above every level's is placed after the last one's (block -1 on an empty side)."""
        cdef Py_ssize_t b = _bisect(self._last, self._nb, rank)
        if b == self._nb:
            b = self._nb - 1
            at[0] = self._blocks[b].n if b >= 0 else 0
            return b
        # the block's last rank is ≥ rank: the answer is before or at it
        at[0] = _bisect(self._blocks[b].rank, self._blocks[b].n - 1, rank)
        return b

    cdef inline bint _at(self, Py_ssize_t b, Py_ssize_t i, double rank) noexcept:
        """Whether the place ``_find`` gave holds a level of ``rank``."""
        return b >= 0 and i < self._blocks[b].n and self._blocks[b].rank[i] == rank

    cdef inline tuple _value(self, Block* blk, Py_ssize_t i):
        return _pair(<object>blk.px[i], _size_text(blk, i))

    cdef int _insert(self, Py_ssize_t b, Py_ssize_t i, double rank, object price, object size) except -1:
        cdef Block* blk = self._open(b, &i, rank)
        Py_INCREF(price)
        blk.px[i] = <PyObject*>price
        _size_from_text(blk, i, size)
        return 0

    cdef Block* _open(self, Py_ssize_t b, Py_ssize_t* at, double rank) except NULL:
        """Room for a new level of ``rank`` at the place ``_find`` gave (block ``b``, index
        ``at[0]``), its rank set and marked changed: its block (``at[0]``: its index there); the
        caller sets its texts."""
        cdef Py_ssize_t i = at[0]
        cdef Block* blk
        cdef Block* upper
        cdef Py_ssize_t half = BLOCK // 2
        if b < 0:  # an empty side
            b, i = 0, 0
            self._add_block(0, _new_block())
        blk = self._blocks[b]
        if blk.n == BLOCK:  # full: its upper half goes to a new block after it
            upper = _new_block()
            self._add_block(b + 1, upper)
            _move(upper, 0, blk, half, BLOCK - half)
            upper.n, blk.n = BLOCK - half, half
            self._last[b], self._last[b + 1] = blk.rank[half - 1], upper.rank[upper.n - 1]
            if i > half:
                b, i, blk = b + 1, i - half, upper
        _move(blk, i + 1, blk, i, blk.n - i)
        blk.rank[i], blk.dirty[i], blk.px[i], blk.sz[i], blk.szn[i] = rank, 1, NULL, NULL, 0
        blk.n += 1
        self._ndirty += 1
        self._n += 1
        if i == blk.n - 1:
            self._last[b] = rank
        at[0] = i
        return blk

    cdef object _pop(self, Py_ssize_t b, Py_ssize_t i):
        """Remove the level at ``i`` of block ``b``; its price text."""
        cdef Block* blk = self._blocks[b]
        cdef Block* nxt
        price = <object>blk.px[i]
        self._forget(price)
        Py_XDECREF(blk.px[i])
        _size_release(blk, i)
        if blk.dirty[i]:
            self._ndirty -= 1
        _move(blk, i, blk, i + 1, blk.n - i - 1)
        blk.n -= 1
        self._n -= 1
        if blk.n == 0:
            self._drop_block(b)
            return price
        self._last[b] = blk.rank[blk.n - 1]
        if blk.n < BLOCK // 4 and b + 1 < self._nb and blk.n + self._blocks[b + 1].n <= BLOCK * 3 // 4:
            nxt = self._blocks[b + 1]  # a small block takes in its next one (the blocks stay big)
            _move(blk, blk.n, nxt, 0, nxt.n)
            blk.n += nxt.n
            self._last[b] = self._last[b + 1]
            self._drop_block(b + 1)
        return price

    cdef inline void _resize(self, Block* blk, Py_ssize_t i, object size) noexcept:
        """The level at ``i`` of ``blk`` takes the size text ``size``."""
        _size_release(blk, i)
        _size_from_text(blk, i, size)
        self._mark(blk, i)

    cdef inline int _resize_chars(self, Block* blk, Py_ssize_t i, const unsigned char* s, Py_ssize_t n) except -1:
        """The level at ``i`` of ``blk`` takes the ASCII size text at ``s``."""
        _size_release(blk, i)
        _size_from_chars(blk, i, s, n)
        self._mark(blk, i)
        return 0

    cdef int _update(self, Block* blk, Py_ssize_t i, object price, object size) except -1:
        """The level at ``i`` of ``blk`` takes ``price`` and ``size``: its row is written at the
        next take (and the row of its former price text deleted, should the text differ)."""
        old = <object>blk.px[i]
        if old != price:
            self._forget(old)
        Py_INCREF(price)
        Py_XDECREF(blk.px[i])
        blk.px[i] = <PyObject*>price
        self._resize(blk, i, size)
        return 0

    def check_blocks(self):
        """The blocks' invariants (for the tests): none empty or over BLOCK, ranks ascending
        across them, each ``_last`` its block's last rank, the counts right. AssertionError if not."""
        cdef Py_ssize_t b, i, n = 0, dirty = 0
        cdef double prev = -INFINITY
        for b in range(self._nb):
            assert 0 < self._blocks[b].n <= BLOCK, (b, self._blocks[b].n)
            for i in range(self._blocks[b].n):
                assert self._blocks[b].rank[i] > prev, (b, i)
                prev = self._blocks[b].rank[i]
                dirty += self._blocks[b].dirty[i]
            assert self._last[b] == prev, b
            n += self._blocks[b].n
        assert (n, dirty) == (self._n, self._ndirty), (n, self._n, dirty, self._ndirty)
        return self._nb

    def __len__(self):
        return self._n

    def __iter__(self):
        """The keys, best first."""
        return iter(self._keys_values(self._n, -INFINITY, False)[0])

    def __contains__(self, double key):
        return self.get(key) is not None

    def __getitem__(self, double key):
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return value

    def get(self, double key):
        cdef double rank = key if self.is_bid else -key
        cdef Py_ssize_t i, b = self._find(rank, &i)
        return self._value(self._blocks[b], i) if self._at(b, i, rank) else None

    def set(self, double key, value):
        cdef double rank = key if self.is_bid else -key
        cdef Py_ssize_t i, b = self._find(rank, &i)
        price, size = value
        if self._at(b, i, rank):
            self._update(self._blocks[b], i, price, size)
        else:
            self._insert(b, i, rank, price, size)

    def remove(self, double key):
        """Remove the level at ``key``; its value, or None if there was none."""
        cdef double rank = key if self.is_bid else -key
        cdef Py_ssize_t i, b = self._find(rank, &i)
        if self._at(b, i, rank):
            value = self._value(self._blocks[b], i)
            self._pop(b, i)
            return value
        return None

    def best(self):
        """(key, value) of the best level, or None for an empty side."""
        if self._n == 0:
            return None
        cdef Block* blk = self._blocks[self._nb - 1]
        cdef double rank = blk.rank[blk.n - 1]
        return (rank if self.is_bid else -rank), self._value(blk, blk.n - 1)

    cdef tuple _keys_values(self, Py_ssize_t limit, double bound, bint values):
        """The keys (and with ``values``, the values) of at most ``limit`` levels whose rank is ≥
        ``bound``, best first."""
        cdef Py_ssize_t b, i, taken = 0
        cdef double sign = 1.0 if self.is_bid else -1.0
        cdef Block* blk
        cdef list keys = [], vals = []
        for b in range(self._nb - 1, -1, -1):
            blk = self._blocks[b]
            for i in range(blk.n - 1, -1, -1):
                if taken == limit or blk.rank[i] < bound:
                    return keys, vals
                keys.append(sign * blk.rank[i])
                if values:
                    vals.append(self._value(blk, i))
                taken += 1
        return keys, vals

    def top(self, Py_ssize_t n):
        """The best ``n`` levels' values, best first."""
        return self._keys_values(n if n > 0 else 0, -INFINITY, True)[1]

    def items(self):
        """Every level as (key, value), best first."""
        keys, vals = self._keys_values(self._n, -INFINITY, True)
        return list(zip(keys, vals))

    def take_rows(self, bytes start, list rows):
        """Append to ``rows`` the table row of every level changed since the last take (see
        ``app.book_core``): each changed level's size, in price order, then a deletion for each
        price text gone and not set again."""
        cdef Py_ssize_t b = 0, i, found = 0, before
        cdef Block* blk
        cdef set written = set() if self._gone else None  # price texts with a row in this take
        while found < self._ndirty and b < self._nb:
            blk = self._blocks[b]
            # the changed levels' price texts were made long ago (cold by now): ask for them all
            # first, so that their cache misses overlap instead of coming one row at a time
            for i in range(blk.n):
                if blk.dirty[i]:
                    _prefetch(blk.px[i])
            for i in range(blk.n):
                if blk.dirty[i]:
                    blk.dirty[i] = 0
                    found += 1
                    price = <object>blk.px[i]
                    rows.append(_pair(_row_key(start, price), _size_bytes(blk, i)))
                    if written is not None:
                        written.add(price)
            b += 1
        self._ndirty = 0
        if written is not None:
            for price in self._gone:
                before = len(written)
                written.add(price)
                if len(written) != before:  # neither set again nor deleted already in this take
                    rows.append(_pair(_row_key(start, price), None))
            self._gone = []
            self._gone_limit = _GONE_MIN

    def within(self, double bound):
        """Keys and values of the levels at ``bound`` or better (bids ≥, asks ≤), best first."""
        return self._keys_values(self._n, bound if self.is_bid else -bound, True)

    def band_sums(self, list bounds, list approx):
        """The cumulative size from the best level out to each of ``bounds`` (nearest first): a
        bid counts up to a bound at a price ≥ it, an ask at ≤. Bounds and sums are integers, the
        value × 10**BAND_SCALE, compared and summed exactly in 128 bits, level by level in C (no
        tuple, Decimal or float made per level): ``app.book._band_sums`` for a deep book, which
        took ~0.75 ms a ``book.depth`` record over the 2,000-odd levels of a Binance book's 100
        bps. None when a price or size is not a plain decimal of at most BAND_SCALE decimals and
        19 integer digits, or a sum reaches 10**34 (Decimal's 34 digits could round it): the
        caller sums with Decimal. ``approx``: each bound as a float, beside it; a level's exact
        price is read only where its float (the level's rank) is within a millionth of one."""
        cdef Py_ssize_t nbounds = len(bounds), j = 0, b, i
        cdef i128 limits[BAND_MAX]
        cdef double near_lo[BAND_MAX]
        cdef double near_hi[BAND_MAX]
        cdef i128 price, size, total = 0
        cdef double px
        cdef bint outside
        cdef Block* blk
        cdef list out = []
        if nbounds > BAND_MAX or len(approx) != nbounds:
            return None
        for j in range(nbounds):
            if not _i128_of(bounds[j], &limits[j]):
                return None
            near_lo[j] = <double>approx[j] * (1 - 1e-6)
            near_hi[j] = <double>approx[j] * (1 + 1e-6)
        j = 0
        for b in range(self._nb - 1, -1, -1):
            blk = self._blocks[b]
            for i in range(blk.n - 1, -1, -1):
                px = blk.rank[i] if self.is_bid else -blk.rank[i]
                while j < nbounds:
                    if near_lo[j] <= px <= near_hi[j]:  # at the bound, as far as a float can tell
                        if not _scaled_text(<object>blk.px[i], &price):
                            return None
                        outside = price < limits[j] if self.is_bid else price > limits[j]
                    else:
                        outside = px < near_lo[j] if self.is_bid else px > near_hi[j]
                    if not outside:
                        break
                    out.append(_int_of(total))
                    j += 1
                if j == nbounds:
                    return out
                if blk.szn[i] == SZ_OBJECT:
                    if not _scaled_text(<object>blk.sz[i], &size):
                        return None
                elif not _scaled(<const unsigned char*>&blk.szt[i * SZ_INLINE], blk.szn[i], &size):
                    return None
                total += size
                if total >= _BAND_LIMIT:
                    return None
        while j < nbounds:
            out.append(_int_of(total))
            j += 1
        return out


cdef inline str _ascii(const unsigned char* s, Py_ssize_t n):
    """The ``n`` ASCII characters at ``s`` as a str, in one copy."""
    text = PyUnicode_New(n, 127)
    memcpy(PyUnicode_DATA(text), s, n)
    return <str>text


cdef inline bint _same_text(object text, const unsigned char* s, Py_ssize_t n) except -1:
    """Whether ``text`` is the str of the ``n`` ASCII characters at ``s``."""
    if type(text) is str and PyUnicode_IS_COMPACT_ASCII(text):
        return PyUnicode_GET_LENGTH(text) == n and memcmp(PyUnicode_DATA(text), s, n) == 0
    return text == _ascii(s, n)


cdef inline Py_ssize_t _ws(const unsigned char* s, Py_ssize_t i, Py_ssize_t n) noexcept:
    """The first index from ``i`` that is not JSON whitespace."""
    while i < n and (s[i] == 32 or s[i] == 10 or s[i] == 13 or s[i] == 9):
        i += 1
    return i


cdef inline Py_ssize_t _decimal_string(const unsigned char* s, Py_ssize_t i, Py_ssize_t n, double* out) noexcept:
    """At ``i`` a JSON string whose text is a plain decimal (:func:`_decimal`): the index of its
    closing quote, the value in ``out``; -1 if not (any other character, an escape included)."""
    cdef Py_ssize_t k
    if i >= n or s[i] != 34:  # '"'
        return -1
    k = _decimal(s + i + 1, n - i - 1, out)
    if k < 0 or i + 1 + k >= n or s[i + 1 + k] != 34:
        return -1
    return i + 1 + k


cdef class RawLevels:
    """A side's levels as the venue wrote them, ``[["price","size"],…]``, read in place from the
    frame's bytes (a ``msgspec.Raw``, see :func:`raw_levels`): each level's price and size as
    offsets into them, beside the price's key and whether the size deletes. The level loop makes
    no text for a level until the book keeps one — a new level's price and size, a level's new
    size — and none for a deletion or an unchanged size. Read as a sequence it is the list of
    (price, size) pairs the general reading gives, and equals it."""

    cdef Py_buffer _view
    cdef bint _held
    cdef Py_ssize_t _n, _cap
    cdef Py_ssize_t* _at  # 4 a level: its price's first and past-last index, then its size's
    cdef double* _keys
    cdef unsigned char* _zero

    def __cinit__(self):
        self._held = False
        self._n = self._cap = 0
        self._at = NULL
        self._keys = NULL
        self._zero = NULL

    def __dealloc__(self):
        if self._held:
            PyBuffer_Release(&self._view)
        PyMem_Free(self._at)
        PyMem_Free(self._keys)
        PyMem_Free(self._zero)

    cdef int _add(self, Py_ssize_t p0, Py_ssize_t p1, Py_ssize_t s0, Py_ssize_t s1, double key,
                  bint zero) except -1:
        cdef Py_ssize_t cap
        cdef void* grown
        if self._n == self._cap:
            cap = 2 * self._cap if self._cap else 32
            grown = PyMem_Realloc(self._at, 4 * cap * sizeof(Py_ssize_t))
            if grown is NULL:
                raise MemoryError()
            self._at = <Py_ssize_t*>grown
            grown = PyMem_Realloc(self._keys, cap * sizeof(double))
            if grown is NULL:
                raise MemoryError()
            self._keys = <double*>grown
            grown = PyMem_Realloc(self._zero, cap)
            if grown is NULL:
                raise MemoryError()
            self._zero, self._cap = <unsigned char*>grown, cap
        self._at[4 * self._n], self._at[4 * self._n + 1] = p0, p1
        self._at[4 * self._n + 2], self._at[4 * self._n + 3] = s0, s1
        self._keys[self._n], self._zero[self._n] = key, zero
        self._n += 1
        return 0

    cdef bint _scan(self) except -1:
        """Read the levels; False unless the bytes are exactly a JSON array of two-string arrays
        whose texts are plain decimals (see :func:`_decimal`), every price above zero."""
        cdef const unsigned char* s = <const unsigned char*>self._view.buf
        cdef Py_ssize_t n = self._view.len, i, p0, p1, s0, s1
        cdef double key, size
        i = _ws(s, 0, n)
        if i >= n or s[i] != 91:  # '['
            return False
        i = _ws(s, i + 1, n)
        if i < n and s[i] == 93:  # ']': no level
            return _ws(s, i + 1, n) == n
        while True:
            if i >= n or s[i] != 91:
                return False
            p0 = _ws(s, i + 1, n)
            p1 = _decimal_string(s, p0, n, &key)
            if p1 < 0 or key <= 0:
                return False
            i = _ws(s, p1 + 1, n)
            if i >= n or s[i] != 44:  # ','
                return False
            s0 = _ws(s, i + 1, n)
            s1 = _decimal_string(s, s0, n, &size)
            if s1 < 0:
                return False
            i = _ws(s, s1 + 1, n)
            if i >= n or s[i] != 93:  # a level of two fields, no more
                return False
            self._add(p0 + 1, p1, s0 + 1, s1, key, size == 0)
            i = _ws(s, i + 1, n)
            if i < n and s[i] == 44:
                i = _ws(s, i + 1, n)
            elif i < n and s[i] == 93:
                return _ws(s, i + 1, n) == n
            else:
                return False

    cdef str _text(self, Py_ssize_t k):
        """Text ``k`` of the levels' (price of level i: 2i, size: 2i + 1)."""
        return _ascii(<const unsigned char*>self._view.buf + self._at[2 * k], self._at[2 * k + 1] - self._at[2 * k])

    cdef list _pairs(self):
        cdef Py_ssize_t i
        return [_pair(self._text(2 * i), self._text(2 * i + 1)) for i in range(self._n)]

    def __len__(self):
        return self._n

    def __iter__(self):
        return iter(self._pairs())

    def __getitem__(self, index):
        return self._pairs()[index]

    def __eq__(self, other):
        if isinstance(other, (RawLevels, list, tuple)):
            return self._pairs() == list(other)
        return NotImplemented

    __hash__ = None

    def __repr__(self):
        return f"RawLevels({self._pairs()!r})"


def raw_levels(raw):
    """The levels of ``raw`` (an object with the buffer protocol: a ``msgspec.Raw`` of a frame's
    ``"b"`` or ``"a"``, bytes) read in place as :class:`RawLevels`, when it is exactly a JSON array
    of ``["price","size"]`` whose texts are plain decimals and whose prices are above zero; None
    for anything else (escapes, numbers, exponents, a third field, a zero price…): the caller
    reads the frame the general way, which gives the answer or the error it always gave."""
    cdef RawLevels levels = RawLevels.__new__(RawLevels)
    PyObject_GetBuffer(raw, &levels._view, PyBUF_SIMPLE)
    levels._held = True
    return levels if levels._scan() else None


cdef double* _parse(list levels, bint* zero) except NULL:
    """Every level's key (and in ``zero``, whether it deletes), validated, in a new C array."""
    cdef Py_ssize_t i, n = len(levels)
    cdef double* keys = <double*>PyMem_Malloc((n if n else 1) * sizeof(double))
    if keys is NULL:
        raise MemoryError()
    try:
        for i in range(n):
            price, size = levels[i]
            keys[i] = parse_key(price)
            zero[i] = parse_zero(size)
    except BaseException:
        PyMem_Free(keys)
        raise
    return keys


cdef void _apply(Side side, str tag, list levels, double* keys, bint* zero, list changes) except *:
    cdef Py_ssize_t i, j, b
    cdef double rank
    cdef Block* blk
    for i in range(len(levels)):
        rank = keys[i] if side.is_bid else -keys[i]
        b = side._find(rank, &j)
        if zero[i]:
            if side._at(b, j, rank):
                price = side._pop(b, j)
                if changes is not None:
                    changes.append((tag, price, None))
        elif not side._at(b, j, rank):
            price, size = levels[i]
            side._insert(b, j, rank, price, size)
            if changes is not None:
                changes.append((tag, price, size))
        else:
            blk = side._blocks[b]
            size = levels[i][1]
            if not _size_is(blk, j, size):
                side._resize(blk, j, size)
                if changes is not None:
                    changes.append((tag, <object>blk.px[j], size))


cdef void _apply_raw(Side side, str tag, RawLevels levels, list changes) except *:
    """``_apply`` of levels read in place: a text is made only for what the side keeps."""
    cdef Py_ssize_t i, j, b
    cdef const unsigned char* s = <const unsigned char*>levels._view.buf
    cdef Py_ssize_t* at
    cdef double rank
    cdef Block* blk
    for i in range(levels._n):
        at = &levels._at[4 * i]
        rank = levels._keys[i] if side.is_bid else -levels._keys[i]
        b = side._find(rank, &j)
        if levels._zero[i]:
            if side._at(b, j, rank):
                price = side._pop(b, j)
                if changes is not None:
                    changes.append((tag, price, None))
        elif not side._at(b, j, rank):
            price = _ascii(s + at[0], at[1] - at[0])  # (made first: the new level is never left without it)
            blk = side._open(b, &j, rank)
            Py_INCREF(price)
            blk.px[j] = <PyObject*>price
            _size_from_chars(blk, j, s + at[2], at[3] - at[2])
            if changes is not None:
                changes.append((tag, price, _size_text(blk, j)))
        else:
            blk = side._blocks[b]
            if not _size_is_chars(blk, j, s + at[2], at[3] - at[2]):
                side._resize_chars(blk, j, s + at[2], at[3] - at[2])
                if changes is not None:
                    changes.append((tag, <object>blk.px[j], _size_text(blk, j)))


def apply_levels(Side bids, Side asks, bid_levels, ask_levels, bint listed=True):
    """Apply absolute level updates of both sides: every level validated first, then applied (a
    bad level leaves the book untouched). Returns the changes made, none listed with ``listed``
    false (see ``app.book_core``). Either side's levels may be :class:`RawLevels` (validated when
    they were read)."""
    cdef bint braw = type(bid_levels) is RawLevels, araw = type(ask_levels) is RawLevels
    cdef list b = None if braw else (bid_levels if type(bid_levels) is list else list(bid_levels))
    cdef list a = None if araw else (ask_levels if type(ask_levels) is list else list(ask_levels))
    cdef Py_ssize_t nb = 0 if braw else len(b)
    cdef bint* zero = <bint*>PyMem_Malloc((nb + (0 if araw else len(a)) + 1) * sizeof(bint))
    cdef double* bkeys = NULL
    cdef double* akeys = NULL
    cdef list changes = [] if listed else None
    if zero is NULL:
        raise MemoryError()
    try:
        if not braw:
            bkeys = _parse(b, zero)
        if not araw:
            akeys = _parse(a, zero + nb)
        if braw:
            _apply_raw(bids, "b", <RawLevels>bid_levels, changes)
        else:
            _apply(bids, "b", b, bkeys, zero, changes)
        if araw:
            _apply_raw(asks, "a", <RawLevels>ask_levels, changes)
        else:
            _apply(asks, "a", a, akeys, zero + nb, changes)
    finally:
        PyMem_Free(zero)
        PyMem_Free(bkeys)
        PyMem_Free(akeys)
    return changes if listed else []


def plain_levels(raw):
    """``raw`` as a new list of (price, size) when it is a list whose every entry is a list of at
    least two strings, its first two kept verbatim (the venues' own form); None otherwise (see
    ``app.book_core``)."""
    cdef list src, out
    cdef Py_ssize_t i, n
    cdef object item
    if type(raw) is not list:
        return None
    src = <list>raw
    n = len(src)
    out = [None] * n
    for i in range(n):
        item = src[i]
        if type(item) is not list or len(<list>item) < 2:
            return None
        price, size = (<list>item)[0], (<list>item)[1]
        if type(price) is not str or type(size) is not str:
            return None
        out[i] = _pair(price, size)
    return out


def encode_rows(bytes start, dict changed, list rows):
    """Append to ``rows`` the table row of each changed level (see ``app.book_core``)."""
    cdef str price
    for price, size in changed.items():
        rows.append(_pair(start + price.encode(), None if size is None else (<str>size).encode()))
