#ifndef ROOTFS_CDEFLATE_SHIM_H
#define ROOTFS_CDEFLATE_SHIM_H
/* libdeflate, for the parallel gzip initrd (ParallelGzip): several times zlib's speed at a
   better ratio. Its whole-buffer API is what independent blocks need. */
#include <libdeflate.h>
#endif
