#ifndef ROOTFS_CARCHIVE_SHIM_H
#define ROOTFS_CARCHIVE_SHIM_H
#include <archive.h>
#include <archive_entry.h>
/* zstd directly, for multi-threaded compression with small jobs (bounded memory). */
#include <zstd.h>
/* zlib directly, for gzip deflated in independent blocks on several cores (ParallelGzip). */
#include <zlib.h>
#endif
