# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The book's level store and level loop, compiled (Cython): ``app.book_core`` in C.

The same API and results as the reference core ``app/book_core.py`` (read it first: its
docstrings hold for this one), with the ranks in a C array of doubles and beside them the
levels' price and size texts in two C arrays (a ``(price, size)`` tuple is made only when a level
is read), the levels found by a C binary search and the whole level loop of an update in C.
Built by ``make install`` (``setup.py``); ``app.book`` runs it when it is built (``BOOK_CORE``).
Change one, change the other.
"""

from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.ref cimport Py_INCREF, Py_XDECREF, PyObject
from libc.math cimport INFINITY
from libc.string cimport memcpy, memmove, memset

from app.errors import FrameError


cdef extern from "Python.h":
    void PyObject_GC_UnTrack(void* op)
    bint PyUnicode_IS_COMPACT_ASCII(object op)
    Py_ssize_t PyUnicode_GET_LENGTH(object op)
    void* PyUnicode_DATA(object op)
    bytes PyUnicode_AsUTF8String(object op)
    object PyBytes_FromStringAndSize(const char* v, Py_ssize_t n)
    char* PyBytes_AS_STRING(object op)


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
    if not PyUnicode_IS_COMPACT_ASCII(price):
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
    """True, with ``float(text)`` in ``out``, when ``text`` is plain decimal ASCII — digits with
    at most one point, at least one digit — whose digits make an integer m ≤ 2**53 and whose
    point has k ≤ 22 digits after it: then m and 10**k are exact doubles and the one correctly
    rounded division m / 10**k is the correctly rounded value of the text, the double ``float``
    gives (Clinger's fast path). False for anything else (signs, exponents, spaces, underscores,
    other digits, more digits): the caller asks ``float``. A venue's prices and sizes are plain
    decimals: this skips making a float object twice per level."""
    cdef Py_ssize_t i, n
    cdef const unsigned char* s
    cdef unsigned long long m = 0
    cdef int frac = -1, digits = 0
    cdef unsigned char c
    if type(text) is not str or not PyUnicode_IS_COMPACT_ASCII(text):
        return False
    n = PyUnicode_GET_LENGTH(text)
    s = <const unsigned char*>PyUnicode_DATA(text)
    for i in range(n):
        c = s[i]
        if c == 46:  # "."
            if frac >= 0:
                return False
            frac = 0
        elif 48 <= c <= 57:
            if m > 100000000000000000ULL:  # one more digit could overflow: not plain enough
                return False
            m = m * 10 + (c - 48)
            digits += 1
            if frac >= 0:
                frac += 1
        else:
            return False
    if digits == 0 or m > _EXACT or frac > 22:
        return False
    out[0] = <double>m / _POW10[frac] if frac > 0 else <double>m
    return True


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


cdef class Side:
    """One side of a book: price key → (price text, size text), sorted, the best last."""

    cdef double* _ranks  # ascending: the price's float for bids, its negation for asks
    cdef PyObject** _px  # beside each rank: the level's price text (a reference held)
    cdef PyObject** _sz  # and its size text: no tuple per level, made only when one is asked
    cdef unsigned char* _dirty  # beside each rank: 1 if the level changed since the last take_rows
    cdef Py_ssize_t _n, _cap, _ndirty
    cdef list _gone  # the price texts of the levels removed since the last take_rows
    cdef Py_ssize_t _gone_limit  # _gone is made unique when it reaches this length
    cdef readonly bint is_bid

    def __cinit__(self, bint is_bid, levels=None):
        self.is_bid = is_bid
        self._gone = []
        self._gone_limit = _GONE_MIN
        self._ranks = NULL
        self._px = self._sz = NULL
        self._dirty = NULL
        self._n = self._cap = self._ndirty = 0

    def __init__(self, bint is_bid, levels=None):
        cdef double key
        if not levels:
            return
        keys = sorted(levels, reverse=not is_bid)
        self._reserve(len(keys))
        for key in keys:
            price, size = levels[key]
            Py_INCREF(price)
            Py_INCREF(size)
            self._px[self._n], self._sz[self._n] = <PyObject*>price, <PyObject*>size
            self._ranks[self._n] = key if is_bid else -key
            self._n += 1

    def __dealloc__(self):
        cdef Py_ssize_t i
        for i in range(self._n):
            Py_XDECREF(self._px[i])
            Py_XDECREF(self._sz[i])
        PyMem_Free(self._ranks)
        PyMem_Free(self._px)
        PyMem_Free(self._sz)
        PyMem_Free(self._dirty)

    cdef int _reserve(self, Py_ssize_t n) except -1:
        cdef Py_ssize_t cap = self._cap if self._cap else 64
        cdef void* grown
        if n <= self._cap:
            return 0
        while cap < n:
            cap *= 2
        grown = PyMem_Realloc(self._ranks, cap * sizeof(double))
        if grown is NULL:
            raise MemoryError()
        self._ranks = <double*>grown
        grown = PyMem_Realloc(self._px, cap * sizeof(PyObject*))
        if grown is NULL:
            raise MemoryError()
        self._px = <PyObject**>grown
        grown = PyMem_Realloc(self._sz, cap * sizeof(PyObject*))
        if grown is NULL:
            raise MemoryError()
        self._sz = <PyObject**>grown
        grown = PyMem_Realloc(self._dirty, cap)
        if grown is NULL:
            raise MemoryError()
        memset(<unsigned char*>grown + self._cap, 0, cap - self._cap)
        self._dirty, self._cap = <unsigned char*>grown, cap
        return 0

    cdef inline void _mark(self, Py_ssize_t i) noexcept:
        if not self._dirty[i]:
            self._dirty[i] = 1
            self._ndirty += 1

    cdef int _forget(self, object price) except -1:
        """A level of ``price`` (text) left the side: its row is deleted at the next take."""
        self._gone.append(price)
        if len(self._gone) >= self._gone_limit:  # a level that comes and goes between two takes
            self._gone = list(set(self._gone))  # (commits failing for a while) is kept once
            self._gone_limit = max(_GONE_MIN, 4 * len(self._gone))
        return 0

    cdef inline Py_ssize_t _find(self, double rank) noexcept:
        """The first index whose rank is ≥ ``rank`` (bisect_left)."""
        cdef Py_ssize_t lo = 0, hi = self._n, mid
        while lo < hi:
            mid = (lo + hi) >> 1
            if self._ranks[mid] < rank:
                lo = mid + 1
            else:
                hi = mid
        return lo

    cdef inline tuple _value(self, Py_ssize_t i):
        return _pair(<object>self._px[i], <object>self._sz[i])

    cdef int _insert(self, Py_ssize_t i, double rank, object price, object size) except -1:
        cdef Py_ssize_t tail = self._n - i
        self._reserve(self._n + 1)
        memmove(&self._ranks[i + 1], &self._ranks[i], tail * sizeof(double))
        memmove(&self._px[i + 1], &self._px[i], tail * sizeof(PyObject*))
        memmove(&self._sz[i + 1], &self._sz[i], tail * sizeof(PyObject*))
        memmove(&self._dirty[i + 1], &self._dirty[i], tail)
        Py_INCREF(price)
        Py_INCREF(size)
        self._ranks[i], self._px[i], self._sz[i] = rank, <PyObject*>price, <PyObject*>size
        self._dirty[i] = 1
        self._ndirty += 1
        self._n += 1
        return 0

    cdef object _pop(self, Py_ssize_t i):
        """Remove the level at ``i``; its price text."""
        cdef Py_ssize_t tail = self._n - i - 1
        price = <object>self._px[i]
        self._forget(price)
        Py_XDECREF(self._px[i])
        Py_XDECREF(self._sz[i])
        if self._dirty[i]:
            self._ndirty -= 1
        memmove(&self._ranks[i], &self._ranks[i + 1], tail * sizeof(double))
        memmove(&self._px[i], &self._px[i + 1], tail * sizeof(PyObject*))
        memmove(&self._sz[i], &self._sz[i + 1], tail * sizeof(PyObject*))
        memmove(&self._dirty[i], &self._dirty[i + 1], tail)
        self._n -= 1
        self._dirty[self._n] = 0
        return price

    cdef inline void _resize(self, Py_ssize_t i, object size) noexcept:
        """The level at ``i`` takes the size text ``size``."""
        Py_INCREF(size)
        Py_XDECREF(self._sz[i])
        self._sz[i] = <PyObject*>size
        self._mark(i)

    cdef int _update(self, Py_ssize_t i, object price, object size) except -1:
        """The level at ``i`` takes ``price`` and ``size``: its row is written at the next take
        (and the row of its former price text deleted, should the text differ)."""
        old = <object>self._px[i]
        if old != price:
            self._forget(old)
        Py_INCREF(price)
        Py_XDECREF(self._px[i])
        self._px[i] = <PyObject*>price
        self._resize(i, size)
        return 0

    def __len__(self):
        return self._n

    def __iter__(self):
        """The keys, best first."""
        cdef Py_ssize_t i
        cdef double sign = 1.0 if self.is_bid else -1.0
        return iter([sign * self._ranks[i] for i in range(self._n - 1, -1, -1)])

    def __contains__(self, double key):
        return self.get(key) is not None

    def __getitem__(self, double key):
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return value

    def get(self, double key):
        cdef double rank = key if self.is_bid else -key
        cdef Py_ssize_t i = self._find(rank)
        return self._value(i) if i < self._n and self._ranks[i] == rank else None

    def set(self, double key, value):
        cdef double rank = key if self.is_bid else -key
        cdef Py_ssize_t i = self._find(rank)
        price, size = value
        if i < self._n and self._ranks[i] == rank:
            self._update(i, price, size)
        else:
            self._insert(i, rank, price, size)

    def remove(self, double key):
        """Remove the level at ``key``; its value, or None if there was none."""
        cdef double rank = key if self.is_bid else -key
        cdef Py_ssize_t i = self._find(rank)
        if i < self._n and self._ranks[i] == rank:
            value = self._value(i)
            self._pop(i)
            return value
        return None

    def best(self):
        """(key, value) of the best level, or None for an empty side."""
        if self._n == 0:
            return None
        cdef double rank = self._ranks[self._n - 1]
        return (rank if self.is_bid else -rank), self._value(self._n - 1)

    def top(self, Py_ssize_t n):
        """The best ``n`` levels' values, best first."""
        cdef Py_ssize_t i, stop = self._n - n if n < self._n else 0
        cdef list out = []
        for i in range(self._n - 1, stop - 1, -1):
            out.append(self._value(i))
        return out

    def items(self):
        """Every level as (key, value), best first."""
        cdef Py_ssize_t i
        cdef double sign = 1.0 if self.is_bid else -1.0
        return [(sign * self._ranks[i], self._value(i)) for i in range(self._n - 1, -1, -1)]

    def take_rows(self, bytes start, list rows):
        """Append to ``rows`` the table row of every level changed since the last take (see
        ``app.book_core``): each changed level's size, in price order, then a deletion for each
        price text gone and not set again."""
        cdef Py_ssize_t i = 0, found = 0, before
        cdef set written = set() if self._gone else None  # price texts with a row in this take
        while found < self._ndirty and i < self._n:
            if self._dirty[i]:
                self._dirty[i] = 0
                found += 1
                price = <object>self._px[i]
                rows.append(_pair(_row_key(start, price), PyUnicode_AsUTF8String(<object>self._sz[i])))
                if written is not None:
                    written.add(price)
            i += 1
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
        cdef Py_ssize_t i, start = self._find(bound if self.is_bid else -bound)
        cdef double sign = 1.0 if self.is_bid else -1.0
        cdef list keys = [], vals = []
        for i in range(self._n - 1, start - 1, -1):
            keys.append(sign * self._ranks[i])
            vals.append(self._value(i))
        return keys, vals


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
    cdef Py_ssize_t i, j
    cdef double rank
    cdef bint found
    for i in range(len(levels)):
        rank = keys[i] if side.is_bid else -keys[i]
        j = side._find(rank)
        found = j < side._n and side._ranks[j] == rank
        if zero[i]:
            if found:
                price = side._pop(j)
                if changes is not None:
                    changes.append((tag, price, None))
        elif not found:
            price, size = levels[i]
            side._insert(j, rank, price, size)
            if changes is not None:
                changes.append((tag, price, size))
        else:
            size = levels[i][1]
            if <object>side._sz[j] != size:
                side._resize(j, size)
                if changes is not None:
                    changes.append((tag, <object>side._px[j], size))


def apply_levels(Side bids, Side asks, bid_levels, ask_levels, bint listed=True):
    """Apply absolute level updates of both sides: every level validated first, then applied (a
    bad level leaves the book untouched). Returns the changes made, none listed with ``listed``
    false (see ``app.book_core``)."""
    cdef list b = bid_levels if type(bid_levels) is list else list(bid_levels)
    cdef list a = ask_levels if type(ask_levels) is list else list(ask_levels)
    cdef bint* zero = <bint*>PyMem_Malloc((len(b) + len(a) + 1) * sizeof(bint))
    cdef double* bkeys = NULL
    cdef double* akeys = NULL
    cdef list changes = [] if listed else None
    if zero is NULL:
        raise MemoryError()
    try:
        bkeys = _parse(b, zero)
        akeys = _parse(a, zero + len(b))
        _apply(bids, "b", b, bkeys, zero, changes)
        _apply(asks, "a", a, akeys, zero + len(b), changes)
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
