/*
** format.h -- the kvmap file format v3, byte by byte (docs/FORMAT.md has the
** full description; this is the summary the code works from).
**
** A database is one file of fixed-size pages (a power of two, 4 KiB to
** 64 KiB, chosen at creation).  All integers are little-endian.  Pages 0, 1
** and 2 (META_PAGES) are meta pages; every other page starts with the 32-byte
** page header.
**
** Meta page (only the first META_SIZE bytes are used, the rest is zero):
**
**   off  size  field
**     0     8  magic  "\x89KVM\r\n\x1a\n"
**     8     4  format version (3)
**    12     4  page size in bytes
**    16     8  txnid of the commit that wrote this meta
**    24     8  root page of the main tree (0: empty tree)
**    32     4  depth of the main tree (0: empty)
**    36     4  flags: bit 0 (M_FLAGS_NOSYNC) the commit did not sync
**    40     8  number of entries in the main tree
**    48     8  high-water mark: pages [0, hwm) are in use or listed free
**    56     8  first free-bitmap index page (0: none)
**    64     8  first page of this commit's record (0: no commit yet)
**    72     8  number of free pages listed in the bitmaps
**    80     8  number of pages listed as pending
**    88     8  floor: commits <= floor are released (their records void)
**    96     8  durable: the newest commit whose pages were on disk when
**              this meta was written; open verifies the pages that the
**              records of commits (durable, txnid] list
**   104    20  reserved, zero
**   124     4  crc32c of bytes [0, 124)
**
** A commit writes the meta slot that does not hold the newest durable
** commit; open takes the newest valid meta whose records verify, else the
** durable one that meta names.
**
** Page header (all other pages):
**
**   off  size  field
**     0     4  crc32c of bytes [4, page_size) of the page
**     4     1  page type (PT_*)
**     5     1  flags (0)
**     6     2  number of cells / entries / records
**     8     8  txnid of the transaction that wrote the page
**    16     8  the page's own number (detects misplaced pages)
**    24     4  branch, leaf: offset of the cell content area ("upper")
**    24     8  overflow, index, record pages: next page of the chain
**              (0: end); free-bitmap pages: first page number covered
**
** Branch and leaf pages are slotted: a u16 cell-offset array grows up from
** byte 32, cells grow down from the end of the page.  Cells are in key order.
**
**   leaf cell:   u16 klen, u32 vlen, key, then the value if inline
**                else u64 first overflow page
**   branch cell: u16 klen, u64 child page, key (cell 0 has klen 0: -inf)
**
** A value is inline iff 2 + 6 + klen + vlen <= max_cell, with
** max_cell = (page_size - 32) / 4, so every page holds at least four cells.
** The largest key is max_cell - 16 (1000 bytes at 4 KiB pages).
**
** Free space: bitmap pages (bit j of the body: page first + j is free)
** found through a chain of bitmap-index pages (u64 bitmap page per range,
** 0 for none), overridden by the newest record's (range, page) pairs.
** Commit records (one chain of pages per commit, flags 1 on every page
** after the first) list the pages the commit wrote with their checksums,
** the runs it freed (pending until released) and the bitmap overrides;
** each points to the previous commit's record.
**
**   record (a byte stream over the chain: bytes [32, page_size) of each
**   page; the entries follow the fixed fields, from byte 64 of the first):
**   off  size  field (first page)
**    32     8  first page of the previous commit's record (0: none)
**    40     4  n_written: (u64 page, u32 checksum) entries
**    44     4  n_freed: (u64 start, u64 count) runs freed by the commit
**    48     4  n_released: (u64 start, u64 count) runs of older commits'
**              pending pages this commit's writer made reusable early
**    52     4  n_override: (u64 range, u64 bitmap page) pairs
**    56     4  flags: bit 0 (R_FLAGS_PAGES_DURABLE) the commit's pages were
**              synced before its meta; n_written is then 0
**    60     4  zero
*/
#ifndef KVM_FORMAT_H
#define KVM_FORMAT_H

#include <stdint.h>
#include <string.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "kvmap reads the file with little-endian loads"
#endif

#define KVM_MAGIC          "\x89KVM\r\n\x1a\n"
#define KVM_VERSION        3u
#define META_PAGES         3u   /* meta slots: pages 0, 1 and 2 (FORMAT.md §2, §7) */
#define KVM_MIN_PAGE       4096u
#define KVM_MAX_PAGE       65536u
#define KVM_MAX_DEPTH      32

#define M_MAGIC            0
#define M_VERSION          8
#define M_PAGESIZE         12
#define M_TXNID            16
#define M_ROOT             24
#define M_DEPTH            32
#define M_FLAGS            36
#define M_FLAGS_NOSYNC     1u
#define M_ENTRIES          40
#define M_HWM              48
#define M_FREE_INDEX       56
#define M_RECORD           64
#define M_FREE_COUNT       72
#define M_PENDING_COUNT    80
#define M_FLOOR            88
#define M_DURABLE          96
#define M_CHECKSUM         124
#define META_SIZE          128

#define PH_CHECKSUM        0
#define PH_TYPE            4
#define PH_FLAGS           5
#define PH_NKEYS           6
#define PH_TXNID           8
#define PH_PGNO            16
#define PH_UPPER           24
#define PH_NEXT            24
#define PH_SIZE            32

#define PT_BRANCH          1
#define PT_LEAF            2
#define PT_OVERFLOW        3
#define PT_FREE_INDEX      4
#define PT_FREE_BITMAP     5
#define PT_RECORD          8   /* (6 and 7 were version 1's pending lists) */

#define PF_CONTINUED       1   /* page header flags: a record page after the first */

#define R_PREV             32
#define R_NWRITTEN         40
#define R_NFREED           44
#define R_NRELEASED        48
#define R_NOVERRIDE        52
#define R_FLAGS            56
#define R_FLAGS_PAGES_DURABLE 1u
#define R_BODY             64
#define R_WRITTEN_SIZE     12  /* u64 page, u32 checksum */
#define R_RUN_SIZE         16  /* u64 start, u64 count; u64 range, u64 page */

/* The lock file <path>-lock (FORMAT.md §9; lock.c): byte offsets of the
** fields an independent reader (kvmap-check) looks at, the fcntl lock bytes,
** and the reader slot's packing (txnid << 16 | handle). */
#define LOCK_MAGIC         0x32306b6c706d766bull   /* "kvmplk02" */
#define LOCK_HANDLES       1024
#define LOCK_BYTE_OPEN     0
#define LOCK_BYTE_WRITER   1
#define LOCK_BYTE_HANDLE   2   /* + handle number */
#define LOCK_OFF_MAGIC     0
#define LOCK_OFF_NREADERS  12
#define LOCK_OFF_TXNID     24  /* the newest commit's txnid (the state's first field) */
#define LOCK_OFF_FILE_ID   152 /* u64 st_dev, u64 st_ino of the database file */
#define LOCK_OFF_PENDING   168 /* u64: the commit whose meta is being written, 0 when none */
#define LOCK_OFF_FLUSH     176 /* u64 flush_txnid, flush_done, flush_bytes; u32 flush_slot, flush_handle */
#define LOCK_OFF_PID       208 /* u32 per handle */
#define LOCK_OFF_READERS   4304   /* u64 per reader slot */

#define LEAF_HDR           6   /* u16 klen, u32 vlen */
#define BRANCH_HDR         10  /* u16 klen, u64 child */

static inline uint16_t rd16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static inline uint32_t rd32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint64_t rd64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static inline void wr16(uint8_t *p, uint16_t v) { memcpy(p, &v, 2); }
static inline void wr32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static inline void wr64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }

uint32_t kvm_crc32c(uint32_t crc, const void *buf, size_t len);

#endif
