import Foundation
import RootfsSupport

/// The on-disk structures of ext4 that rootfs writes (Ext4Writer) and reads
/// (Ext4Reader), each with one `encode()` and one `decode(from:)` built on
/// BinaryEncoder/BinaryDecoder, so no other code knows a field's offset.
/// Offsets and meanings: the kernel's fs/ext4/ext4.h, ext4_extents.h and
/// include/linux/jbd2.h. Fields the project never sets are not modelled; they
/// encode as zeros and are ignored when decoding.

/// Feature bits of the superblock that the writer sets or the reader checks.
enum Ext4Feature {
    static let compatHasJournal: UInt32 = 0x4
    static let compatDirIndex: UInt32 = 0x20

    static let incompatCompression: UInt32 = 0x1
    static let incompatFiletype: UInt32 = 0x2
    static let incompatRecover: UInt32 = 0x4
    static let incompatJournalDev: UInt32 = 0x8
    static let incompatMetaBG: UInt32 = 0x10
    static let incompatExtents: UInt32 = 0x40
    static let incompat64bit: UInt32 = 0x80
    static let incompatMMP: UInt32 = 0x100
    static let incompatFlexBG: UInt32 = 0x200
    static let incompatEAInode: UInt32 = 0x400
    static let incompatDirData: UInt32 = 0x1000
    static let incompatCsumSeed: UInt32 = 0x2000
    static let incompatLargeDir: UInt32 = 0x4000
    static let incompatInlineData: UInt32 = 0x8000
    static let incompatEncrypt: UInt32 = 0x10000
    static let incompatCasefold: UInt32 = 0x20000

    static let roCompatSparseSuper: UInt32 = 0x1
    static let roCompatLargeFile: UInt32 = 0x2
    static let roCompatHugeFile: UInt32 = 0x8
    static let roCompatDirNlink: UInt32 = 0x20
    static let roCompatExtraIsize: UInt32 = 0x40
    static let roCompatMetadataCsum: UInt32 = 0x400
}

/// The superblock: 1024 bytes at byte 1024 of the file system (and copies at the start of backup groups).
struct Ext4Superblock: Equatable {
    static let size = 1024
    static let magic: UInt16 = 0xEF53

    var inodesCount: UInt32 = 0
    /// Low 32 bits in the base structure, high 32 bits with the 64bit feature.
    var blocksCount: UInt64 = 0
    var reservedBlocksCount: UInt64 = 0
    var freeBlocksCount: UInt64 = 0
    var freeInodesCount: UInt32 = 0
    var firstDataBlock: UInt32 = 0
    /// Block size is 1024 << logBlockSize.
    var logBlockSize: UInt32 = 0
    var logClusterSize: UInt32 = 0
    var blocksPerGroup: UInt32 = 0
    var clustersPerGroup: UInt32 = 0
    var inodesPerGroup: UInt32 = 0
    var mountTime: UInt32 = 0
    var writeTime: UInt32 = 0
    var mountCount: UInt16 = 0
    var maxMountCount: UInt16 = 0
    var magic: UInt16 = Self.magic
    var state: UInt16 = 0
    var errors: UInt16 = 0
    var lastCheck: UInt32 = 0
    var checkInterval: UInt32 = 0
    var creatorOS: UInt32 = 0
    var revisionLevel: UInt32 = 0
    var firstInode: UInt32 = 0
    var inodeSize: UInt16 = 0
    var blockGroupNumber: UInt16 = 0
    var featureCompat: UInt32 = 0
    var featureIncompat: UInt32 = 0
    var featureRoCompat: UInt32 = 0
    var uuid: [UInt8] = .init(repeating: 0, count: 16)
    var volumeName: [UInt8] = .init(repeating: 0, count: 16)
    var reservedGdtBlocks: UInt16 = 0
    var journalUUID: [UInt8] = .init(repeating: 0, count: 16)
    var journalInode: UInt32 = 0
    var hashSeed: [UInt8] = .init(repeating: 0, count: 16)
    var defaultHashVersion: UInt8 = 0
    /// 1: `journalBlocks` holds a copy of the journal inode's i_block, i_size_high and i_size.
    var journalBackupType: UInt8 = 0
    /// The size of a group descriptor with the 64bit feature (32 without).
    var descriptorSize: UInt16 = 0
    var defaultMountOptions: UInt32 = 0
    var firstMetaBG: UInt32 = 0
    var mkfsTime: UInt32 = 0
    var journalBlocks: [UInt32] = .init(repeating: 0, count: 17)
    var minExtraIsize: UInt16 = 0
    var wantExtraIsize: UInt16 = 0
    var flags: UInt32 = 0
    var logGroupsPerFlex: UInt8 = 0
    var checksumType: UInt8 = 0
    var checksumSeed: UInt32 = 0
    var checksum: UInt32 = 0

    var blockSize: Int { 1024 << Int(min(logBlockSize, 16)) }
    var is64bit: Bool { featureIncompat & Ext4Feature.incompat64bit != 0 }

    func encode() -> [UInt8] {
        var e = BinaryEncoder(zeros: Self.size)
        e.put(inodesCount, at: 0x00)
        e.put(UInt32(truncatingIfNeeded: blocksCount), at: 0x04)
        e.put(UInt32(truncatingIfNeeded: reservedBlocksCount), at: 0x08)
        e.put(UInt32(truncatingIfNeeded: freeBlocksCount), at: 0x0C)
        e.put(freeInodesCount, at: 0x10)
        e.put(firstDataBlock, at: 0x14)
        e.put(logBlockSize, at: 0x18)
        e.put(logClusterSize, at: 0x1C)
        e.put(blocksPerGroup, at: 0x20)
        e.put(clustersPerGroup, at: 0x24)
        e.put(inodesPerGroup, at: 0x28)
        e.put(mountTime, at: 0x2C)
        e.put(writeTime, at: 0x30)
        e.put(mountCount, at: 0x34)
        e.put(maxMountCount, at: 0x36)
        e.put(magic, at: 0x38)
        e.put(state, at: 0x3A)
        e.put(errors, at: 0x3C)
        e.put(lastCheck, at: 0x40)
        e.put(checkInterval, at: 0x44)
        e.put(creatorOS, at: 0x48)
        e.put(revisionLevel, at: 0x4C)
        e.put(firstInode, at: 0x54)
        e.put(inodeSize, at: 0x58)
        e.put(blockGroupNumber, at: 0x5A)
        e.put(featureCompat, at: 0x5C)
        e.put(featureIncompat, at: 0x60)
        e.put(featureRoCompat, at: 0x64)
        e.put(Self.fixed(uuid, 16), at: 0x68)
        e.put(Self.fixed(volumeName, 16), at: 0x78)
        e.put(reservedGdtBlocks, at: 0xCE)
        e.put(Self.fixed(journalUUID, 16), at: 0xD0)
        e.put(journalInode, at: 0xE0)
        e.put(Self.fixed(hashSeed, 16), at: 0xEC)
        e.put(defaultHashVersion, at: 0xFC)
        e.put(journalBackupType, at: 0xFD)
        e.put(descriptorSize, at: 0xFE)
        e.put(defaultMountOptions, at: 0x100)
        e.put(firstMetaBG, at: 0x104)
        e.put(mkfsTime, at: 0x108)
        for (k, word) in journalBlocks.prefix(17).enumerated() { e.put(word, at: 0x10C + 4 * k) }
        if is64bit {
            e.put(UInt32(truncatingIfNeeded: blocksCount >> 32), at: 0x150)
            e.put(UInt32(truncatingIfNeeded: reservedBlocksCount >> 32), at: 0x154)
            e.put(UInt32(truncatingIfNeeded: freeBlocksCount >> 32), at: 0x158)
        }
        e.put(minExtraIsize, at: 0x15C)
        e.put(wantExtraIsize, at: 0x15E)
        e.put(flags, at: 0x160)
        e.put(logGroupsPerFlex, at: 0x174)
        e.put(checksumType, at: 0x175)
        e.put(checksumSeed, at: 0x270)
        e.put(checksum, at: 0x3FC)
        return e.bytes
    }

    static func decode(from d: BinaryDecoder) throws -> Ext4Superblock {
        var s = Ext4Superblock()
        s.inodesCount = try d.u32(0x00)
        s.featureIncompat = try d.u32(0x60)
        let hi: (Int) throws -> UInt64 = { s.is64bit ? UInt64(try d.u32($0)) << 32 : 0 }
        s.blocksCount = UInt64(try d.u32(0x04)) | (try hi(0x150))
        s.reservedBlocksCount = UInt64(try d.u32(0x08)) | (try hi(0x154))
        s.freeBlocksCount = UInt64(try d.u32(0x0C)) | (try hi(0x158))
        s.freeInodesCount = try d.u32(0x10)
        s.firstDataBlock = try d.u32(0x14)
        s.logBlockSize = try d.u32(0x18)
        s.logClusterSize = try d.u32(0x1C)
        s.blocksPerGroup = try d.u32(0x20)
        s.clustersPerGroup = try d.u32(0x24)
        s.inodesPerGroup = try d.u32(0x28)
        s.mountTime = try d.u32(0x2C)
        s.writeTime = try d.u32(0x30)
        s.mountCount = try d.u16(0x34)
        s.maxMountCount = try d.u16(0x36)
        s.magic = try d.u16(0x38)
        s.state = try d.u16(0x3A)
        s.errors = try d.u16(0x3C)
        s.lastCheck = try d.u32(0x40)
        s.checkInterval = try d.u32(0x44)
        s.creatorOS = try d.u32(0x48)
        s.revisionLevel = try d.u32(0x4C)
        s.firstInode = try d.u32(0x54)
        s.inodeSize = try d.u16(0x58)
        s.blockGroupNumber = try d.u16(0x5A)
        s.featureCompat = try d.u32(0x5C)
        s.featureRoCompat = try d.u32(0x64)
        s.uuid = try d.bytes(at: 0x68, count: 16)
        s.volumeName = try d.bytes(at: 0x78, count: 16)
        s.reservedGdtBlocks = try d.u16(0xCE)
        s.journalUUID = try d.bytes(at: 0xD0, count: 16)
        s.journalInode = try d.u32(0xE0)
        s.hashSeed = try d.bytes(at: 0xEC, count: 16)
        s.defaultHashVersion = try d.u8(0xFC)
        s.journalBackupType = try d.u8(0xFD)
        s.descriptorSize = try d.u16(0xFE)
        s.defaultMountOptions = try d.u32(0x100)
        s.firstMetaBG = try d.u32(0x104)
        s.mkfsTime = try d.u32(0x108)
        s.journalBlocks = try (0..<17).map { try d.u32(0x10C + 4 * $0) }
        s.minExtraIsize = try d.u16(0x15C)
        s.wantExtraIsize = try d.u16(0x15E)
        s.flags = try d.u32(0x160)
        s.logGroupsPerFlex = try d.u8(0x174)
        s.checksumType = try d.u8(0x175)
        s.checksumSeed = try d.u32(0x270)
        s.checksum = try d.u32(0x3FC)
        return s
    }

    static func fixed(_ bytes: [UInt8], _ width: Int) -> [UInt8] {
        Array(bytes.prefix(width)) + [UInt8](repeating: 0, count: max(0, width - bytes.count))
    }
}

/// One block group's descriptor: 32 bytes, or `descriptorSize` (64) with the 64bit feature.
struct Ext4GroupDescriptor: Equatable {
    var blockBitmap: UInt64 = 0
    var inodeBitmap: UInt64 = 0
    var inodeTable: UInt64 = 0
    var freeBlocksCount: UInt32 = 0
    var freeInodesCount: UInt32 = 0
    var usedDirsCount: UInt32 = 0
    var flags: UInt16 = 0
    var itableUnused: UInt32 = 0
    var checksum: UInt16 = 0

    /// `size` is 32, or the superblock's descriptor size (at least 64) with the 64bit feature.
    func encode(size: Int = 32) -> [UInt8] {
        var e = BinaryEncoder(zeros: size)
        e.put(UInt32(truncatingIfNeeded: blockBitmap), at: 0x00)
        e.put(UInt32(truncatingIfNeeded: inodeBitmap), at: 0x04)
        e.put(UInt32(truncatingIfNeeded: inodeTable), at: 0x08)
        e.put(UInt16(truncatingIfNeeded: freeBlocksCount), at: 0x0C)
        e.put(UInt16(truncatingIfNeeded: freeInodesCount), at: 0x0E)
        e.put(UInt16(truncatingIfNeeded: usedDirsCount), at: 0x10)
        e.put(flags, at: 0x12)
        e.put(UInt16(truncatingIfNeeded: itableUnused), at: 0x1C)
        e.put(checksum, at: 0x1E)
        if size >= 64 {
            e.put(UInt32(truncatingIfNeeded: blockBitmap >> 32), at: 0x20)
            e.put(UInt32(truncatingIfNeeded: inodeBitmap >> 32), at: 0x24)
            e.put(UInt32(truncatingIfNeeded: inodeTable >> 32), at: 0x28)
            e.put(UInt16(truncatingIfNeeded: freeBlocksCount >> 16), at: 0x2C)
            e.put(UInt16(truncatingIfNeeded: freeInodesCount >> 16), at: 0x2E)
            e.put(UInt16(truncatingIfNeeded: usedDirsCount >> 16), at: 0x30)
            e.put(UInt16(truncatingIfNeeded: itableUnused >> 16), at: 0x32)
        }
        return e.bytes
    }

    static func decode(from d: BinaryDecoder, at o: Int, size: Int = 32) throws -> Ext4GroupDescriptor {
        var g = Ext4GroupDescriptor()
        let wide = size >= 64
        func hi32(_ off: Int) throws -> UInt64 { wide ? UInt64(try d.u32(o + off)) << 32 : 0 }
        func hi16(_ off: Int) throws -> UInt32 { wide ? UInt32(try d.u16(o + off)) << 16 : 0 }
        g.blockBitmap = UInt64(try d.u32(o + 0x00)) | (try hi32(0x20))
        g.inodeBitmap = UInt64(try d.u32(o + 0x04)) | (try hi32(0x24))
        g.inodeTable = UInt64(try d.u32(o + 0x08)) | (try hi32(0x28))
        g.freeBlocksCount = UInt32(try d.u16(o + 0x0C)) | (try hi16(0x2C))
        g.freeInodesCount = UInt32(try d.u16(o + 0x0E)) | (try hi16(0x2E))
        g.usedDirsCount = UInt32(try d.u16(o + 0x10)) | (try hi16(0x30))
        g.flags = try d.u16(o + 0x12)
        g.itableUnused = UInt32(try d.u16(o + 0x1C)) | (try hi16(0x32))
        g.checksum = try d.u16(o + 0x1E)
        return g
    }
}

/// An inode time: seconds since 1970 (signed, 34 bits) and nanoseconds; the
/// low 32 bits sit in the base inode, the epoch bits and nanoseconds in the
/// `_extra` field of the large inode.
struct Ext4Time: Equatable {
    var seconds: Int64 = 0
    var nanoseconds: UInt32 = 0

    var low: UInt32 { UInt32(truncatingIfNeeded: seconds) }
    /// Bits 0-1: how many times 2^32 to add to the sign-extended low word; bits 2-31: nanoseconds.
    var extra: UInt32 {
        UInt32(truncatingIfNeeded: (seconds - Int64(Int32(truncatingIfNeeded: seconds))) >> 32) & 3 | nanoseconds << 2
    }

    init(seconds: Int64, nanoseconds: UInt32 = 0) {
        self.seconds = seconds
        self.nanoseconds = nanoseconds
    }

    init(low: UInt32, extra: UInt32?) {
        seconds = Int64(Int32(bitPattern: low)) + Int64((extra ?? 0) & 3) << 32
        nanoseconds = (extra ?? 0) >> 2
    }
}

/// An inode (256 bytes as both writers make them; the large-inode fields only
/// when the inode size and `extraIsize` cover them).
struct Ext4Inode: Equatable {
    static let flagIndex: UInt32 = 0x1000          // htree directory
    static let flagHugeFile: UInt32 = 0x40000      // i_blocks in file-system blocks
    static let flagExtents: UInt32 = 0x80000
    static let flagEAInode: UInt32 = 0x200000
    static let flagInlineData: UInt32 = 0x10000000

    var mode: UInt16 = 0
    var uid: UInt32 = 0
    var size: UInt64 = 0
    var atime = Ext4Time(seconds: 0)
    var ctime = Ext4Time(seconds: 0)
    var mtime = Ext4Time(seconds: 0)
    var crtime = Ext4Time(seconds: 0)
    var dtime: UInt32 = 0
    var gid: UInt32 = 0
    var linksCount: UInt16 = 0
    /// i_blocks: 512-byte sectors (or file-system blocks with huge_file and flagHugeFile).
    var blocks: UInt64 = 0
    var flags: UInt32 = 0
    /// i_block: the extent tree root, a fast symlink's target or a device number.
    var block: [UInt8] = .init(repeating: 0, count: 60)
    var generation: UInt32 = 0
    var fileACL: UInt64 = 0
    /// Bytes of the large-inode part in use past byte 128 (0 for a 128-byte inode).
    var extraIsize: UInt16 = 0
    var checksum: UInt32 = 0

    var fileType: UInt32 { UInt32(mode) & 0o170000 }

    func encode(size inodeSize: Int = 256) -> [UInt8] {
        var e = BinaryEncoder(zeros: inodeSize)
        e.put(mode, at: 0x00)
        e.put(UInt16(truncatingIfNeeded: uid), at: 0x02)
        e.put(UInt32(truncatingIfNeeded: size), at: 0x04)
        e.put(atime.low, at: 0x08)
        e.put(ctime.low, at: 0x0C)
        e.put(mtime.low, at: 0x10)
        e.put(dtime, at: 0x14)
        e.put(UInt16(truncatingIfNeeded: gid), at: 0x18)
        e.put(linksCount, at: 0x1A)
        e.put(UInt32(truncatingIfNeeded: blocks), at: 0x1C)
        e.put(flags, at: 0x20)
        e.put(Ext4Superblock.fixed(block, 60), at: 0x28)
        e.put(generation, at: 0x64)
        e.put(UInt32(truncatingIfNeeded: fileACL), at: 0x68)
        e.put(UInt32(truncatingIfNeeded: size >> 32), at: 0x6C)
        e.put(UInt16(truncatingIfNeeded: blocks >> 32), at: 0x74)
        e.put(UInt16(truncatingIfNeeded: fileACL >> 32), at: 0x76)
        e.put(UInt16(truncatingIfNeeded: uid >> 16), at: 0x78)
        e.put(UInt16(truncatingIfNeeded: gid >> 16), at: 0x7A)
        e.put(UInt16(truncatingIfNeeded: checksum), at: 0x7C)
        if inodeSize > 128 {
            e.put(extraIsize, at: 0x80)
            if extraIsize >= 4 { e.put(UInt16(truncatingIfNeeded: checksum >> 16), at: 0x82) }
            if extraIsize >= 8 { e.put(ctime.extra, at: 0x84) }
            if extraIsize >= 12 { e.put(mtime.extra, at: 0x88) }
            if extraIsize >= 16 { e.put(atime.extra, at: 0x8C) }
            if extraIsize >= 20 { e.put(crtime.low, at: 0x90) }
            if extraIsize >= 24 { e.put(crtime.extra, at: 0x94) }
        }
        return e.bytes
    }

    static func decode(from d: BinaryDecoder, at o: Int = 0, size inodeSize: Int = 256) throws -> Ext4Inode {
        var n = Ext4Inode()
        n.mode = try d.u16(o + 0x00)
        n.uid = UInt32(try d.u16(o + 0x02)) | UInt32(try d.u16(o + 0x78)) << 16
        n.size = UInt64(try d.u32(o + 0x04)) | UInt64(try d.u32(o + 0x6C)) << 32
        n.dtime = try d.u32(o + 0x14)
        n.gid = UInt32(try d.u16(o + 0x18)) | UInt32(try d.u16(o + 0x7A)) << 16
        n.linksCount = try d.u16(o + 0x1A)
        n.blocks = UInt64(try d.u32(o + 0x1C)) | UInt64(try d.u16(o + 0x74)) << 32
        n.flags = try d.u32(o + 0x20)
        n.block = try d.bytes(at: o + 0x28, count: 60)
        n.generation = try d.u32(o + 0x64)
        n.fileACL = UInt64(try d.u32(o + 0x68)) | UInt64(try d.u16(o + 0x76)) << 32
        n.checksum = UInt32(try d.u16(o + 0x7C))
        var extra = 0
        if inodeSize > 128 {
            n.extraIsize = try d.u16(o + 0x80)
            // A hostile extra size larger than the inode is ignored, not trusted.
            extra = Int(n.extraIsize) + 128 <= inodeSize ? Int(n.extraIsize) : 0
            if extra >= 4 { n.checksum |= UInt32(try d.u16(o + 0x82)) << 16 }
        }
        func extraField(_ off: Int, _ needed: Int) throws -> UInt32? { extra >= needed ? try d.u32(o + off) : nil }
        n.ctime = Ext4Time(low: try d.u32(o + 0x0C), extra: try extraField(0x84, 8))
        n.mtime = Ext4Time(low: try d.u32(o + 0x10), extra: try extraField(0x88, 12))
        n.atime = Ext4Time(low: try d.u32(o + 0x08), extra: try extraField(0x8C, 16))
        n.crtime = Ext4Time(low: try extraField(0x90, 20) ?? 0, extra: try extraField(0x94, 24))
        return n
    }

    /// The device number as i_block holds it: the old 8:8 encoding in word 0 when
    /// both fit, else the new one in word 1 (as the kernel's ext4_set_inode's
    /// new_encode_dev). `major`/`minor` as glibc's gnu_dev_major/minor.
    static func deviceBlock(major: UInt32, minor: UInt32) -> [UInt8] {
        var e = BinaryEncoder(zeros: 60)
        if major < 256 && minor < 256 {
            e.put((major << 8) | minor, at: 0)
        } else {
            e.put((minor & 0xff) | (major << 8) | ((minor & ~0xff) << 12), at: 4)
        }
        return e.bytes
    }

    /// (major, minor) from i_block: word 0 if not zero (old encoding), else word 1.
    var device: (major: UInt32, minor: UInt32) {
        let d = BinaryDecoder(block, what: "a device inode")
        let old = (try? d.u32(0)) ?? 0
        if old != 0 { return ((old >> 8) & 0xff, old & 0xff) }
        let new = (try? d.u32(4)) ?? 0
        return ((new & 0xfff00) >> 8, (new & 0xff) | ((new >> 12) & 0xfff00))
    }
}

/// The header of every extent tree node: in i_block (4 entries) or a block.
struct Ext4ExtentHeader: Equatable {
    static let magic: UInt16 = 0xF30A
    static let size = 12

    var magic: UInt16 = Self.magic
    var entries: UInt16
    var max: UInt16
    /// 0: the entries are leaves (extents); above: index entries.
    var depth: UInt16
    var generation: UInt32 = 0

    func encode() -> [UInt8] {
        var e = BinaryEncoder(zeros: Self.size)
        e.put(magic, at: 0)
        e.put(entries, at: 2)
        e.put(max, at: 4)
        e.put(depth, at: 6)
        e.put(generation, at: 8)
        return e.bytes
    }

    static func decode(from d: BinaryDecoder, at o: Int = 0) throws -> Ext4ExtentHeader {
        Ext4ExtentHeader(magic: try d.u16(o), entries: try d.u16(o + 2), max: try d.u16(o + 4),
                         depth: try d.u16(o + 6), generation: try d.u32(o + 8))
    }
}

/// A leaf entry: `length` blocks from logical `block` at physical `start`.
/// A length over 32768 marks an unwritten (preallocated) extent of length - 32768 blocks.
struct Ext4ExtentLeaf: Equatable {
    static let size = 12
    static let maxInitialized: UInt32 = 32768

    var block: UInt32
    /// The real length in blocks (1...32768).
    var length: UInt32
    var start: UInt64
    var unwritten = false

    func encode() -> [UInt8] {
        var e = BinaryEncoder(zeros: Self.size)
        e.put(block, at: 0)
        e.put(UInt16(truncatingIfNeeded: unwritten ? length + Self.maxInitialized : length), at: 4)
        e.put(UInt16(truncatingIfNeeded: start >> 32), at: 6)
        e.put(UInt32(truncatingIfNeeded: start), at: 8)
        return e.bytes
    }

    static func decode(from d: BinaryDecoder, at o: Int) throws -> Ext4ExtentLeaf {
        let raw = UInt32(try d.u16(o + 4))
        return Ext4ExtentLeaf(block: try d.u32(o), length: raw > maxInitialized ? raw - maxInitialized : raw,
                              start: UInt64(try d.u16(o + 6)) << 32 | UInt64(try d.u32(o + 8)),
                              unwritten: raw > maxInitialized)
    }
}

/// An index entry: the node at physical `child` covers logical blocks from `block`.
struct Ext4ExtentIndex: Equatable {
    static let size = 12

    var block: UInt32
    var child: UInt64

    func encode() -> [UInt8] {
        var e = BinaryEncoder(zeros: Self.size)
        e.put(block, at: 0)
        e.put(UInt32(truncatingIfNeeded: child), at: 4)
        e.put(UInt16(truncatingIfNeeded: child >> 32), at: 8)
        return e.bytes
    }

    static func decode(from d: BinaryDecoder, at o: Int) throws -> Ext4ExtentIndex {
        Ext4ExtentIndex(block: try d.u32(o), child: UInt64(try d.u32(o + 4)) | UInt64(try d.u16(o + 8)) << 32)
    }
}

/// An extent tree node: a header and its entries, in `size` bytes (60 in i_block, a block otherwise).
enum Ext4ExtentNode: Equatable {
    case leaves([Ext4ExtentLeaf])
    case indexes(depth: UInt16, [Ext4ExtentIndex])

    static func capacity(_ size: Int) -> Int { (size - Ext4ExtentHeader.size) / 12 }

    func encode(size: Int) -> [UInt8] {
        var e = BinaryEncoder(zeros: size)
        switch self {
        case .leaves(let entries):
            e.put(Ext4ExtentHeader(entries: UInt16(entries.count), max: UInt16(Self.capacity(size)), depth: 0).encode(), at: 0)
            for (k, x) in entries.enumerated() { e.put(x.encode(), at: 12 + 12 * k) }
        case .indexes(let depth, let entries):
            e.put(Ext4ExtentHeader(entries: UInt16(entries.count), max: UInt16(Self.capacity(size)), depth: depth).encode(), at: 0)
            for (k, x) in entries.enumerated() { e.put(x.encode(), at: 12 + 12 * k) }
        }
        return e.bytes
    }

    /// Decodes and checks a node of `size` bytes: magic, entry counts within the
    /// node, the depth expected (`depth` nil: any up to 5), entries in increasing logical order.
    static func decode(from d: BinaryDecoder, size: Int, depth expected: UInt16?) throws -> (Ext4ExtentHeader, Ext4ExtentNode) {
        let h = try Ext4ExtentHeader.decode(from: d)
        guard h.magic == Ext4ExtentHeader.magic else {
            throw RootfsError("\(d.what) is not an extent tree node (magic 0x\(String(h.magic, radix: 16)))")
        }
        guard Int(h.max) <= capacity(size), h.entries <= h.max else {
            throw RootfsError("\(d.what) claims \(h.entries) of \(h.max) entries in a node of \(capacity(size))")
        }
        guard h.depth <= 5, expected == nil || h.depth == expected else {
            throw RootfsError("\(d.what) has depth \(h.depth)\(expected.map { ", expected \($0)" } ?? ", more than 5")")
        }
        var previous: UInt64?
        if h.depth == 0 {
            var out: [Ext4ExtentLeaf] = []
            for k in 0..<Int(h.entries) {
                let x = try Ext4ExtentLeaf.decode(from: d, at: 12 + 12 * k)
                guard x.length > 0, previous.map({ UInt64(x.block) >= $0 }) ?? true else {
                    throw RootfsError("\(d.what): extent \(k) (logical \(x.block), \(x.length) blocks) is empty or overlaps the one before")
                }
                previous = UInt64(x.block) + UInt64(x.length)
                out.append(x)
            }
            return (h, .leaves(out))
        }
        var out: [Ext4ExtentIndex] = []
        for k in 0..<Int(h.entries) {
            let x = try Ext4ExtentIndex.decode(from: d, at: 12 + 12 * k)
            guard previous.map({ UInt64(x.block) > $0 }) ?? true else {
                throw RootfsError("\(d.what): index entry \(k) (logical \(x.block)) is not after the one before")
            }
            previous = UInt64(x.block)
            out.append(x)
        }
        return (h, .indexes(depth: h.depth, out))
    }
}

/// A linear directory entry: inode, record length (to the next entry), name, type.
struct Ext4DirectoryEntry: Equatable {
    static let headerSize = 8

    var inode: UInt32
    /// Bytes from this entry to the next (the last one of a block reaches the block's end).
    var recordLength: UInt16
    var fileType: UInt8
    var name: [UInt8]

    /// The smallest record holding a name of `count` bytes (4-byte aligned).
    static func minimumLength(nameCount count: Int) -> Int { headerSize + (count + 3) / 4 * 4 }

    func encode() -> [UInt8] {
        var e = BinaryEncoder(zeros: Int(recordLength))
        e.put(inode, at: 0)
        e.put(recordLength, at: 4)
        e.put(UInt8(truncatingIfNeeded: name.count), at: 6)
        e.put(fileType, at: 7)
        e.put(name, at: 8)
        return e.bytes
    }

    /// Decodes and checks the entry at `o` of a directory block of `blockSize`
    /// bytes: the record stays in the block, holds its name and is 4-byte aligned.
    static func decode(from d: BinaryDecoder, at o: Int, blockSize: Int) throws -> Ext4DirectoryEntry {
        let inode = try d.u32(o)
        var length = Int(try d.u16(o + 4))
        // 64 KiB blocks store a record of 65536 bytes as 0 or 65535.
        if blockSize == 65536 && (length == 0 || length == 65535) { length = 65536 }
        let nameCount = Int(try d.u8(o + 6))
        guard length >= headerSize, length % 4 == 0, o + length <= blockSize, headerSize + nameCount <= length else {
            throw RootfsError("\(d.what): the directory entry at offset \(o) has a record length of \(length) bytes (name \(nameCount) bytes, block \(blockSize))")
        }
        return Ext4DirectoryEntry(inode: inode, recordLength: UInt16(truncatingIfNeeded: length), fileType: try d.u8(o + 7),
                                  name: try d.bytes(at: o + 8, count: nameCount))
    }
}

/// The jbd2 journal superblock (big-endian) in the journal's first block, as an
/// empty journal has it: nothing to replay (start 0).
struct Ext4JournalSuperblock: Equatable {
    static let magic: UInt32 = 0xC03B3998
    static let superblockV2: UInt32 = 4

    var magic: UInt32 = Self.magic
    var blockType: UInt32 = Self.superblockV2
    var headerSequence: UInt32 = 0
    var blockSize: UInt32
    var maxLength: UInt32
    var first: UInt32 = 1
    var sequence: UInt32 = 1
    /// The first block of the log to replay; 0: the journal is empty.
    var start: UInt32 = 0
    var uuid: [UInt8]
    var users: UInt32 = 1

    func encode(size: Int) -> [UInt8] {
        var e = BinaryEncoder(order: .big, zeros: size)
        e.put(magic, at: 0x00)
        e.put(blockType, at: 0x04)
        e.put(headerSequence, at: 0x08)
        e.put(blockSize, at: 0x0C)
        e.put(maxLength, at: 0x10)
        e.put(first, at: 0x14)
        e.put(sequence, at: 0x18)
        e.put(start, at: 0x1C)
        e.put(Ext4Superblock.fixed(uuid, 16), at: 0x30)
        e.put(users, at: 0x40)
        return e.bytes
    }

    static func decode(from bytes: [UInt8], what: String) throws -> Ext4JournalSuperblock {
        let d = BinaryDecoder(bytes, order: .big, what: what)
        return Ext4JournalSuperblock(magic: try d.u32(0x00), blockType: try d.u32(0x04), headerSequence: try d.u32(0x08),
                                     blockSize: try d.u32(0x0C), maxLength: try d.u32(0x10), first: try d.u32(0x14),
                                     sequence: try d.u32(0x18), start: try d.u32(0x1C), uuid: try d.bytes(at: 0x30, count: 16),
                                     users: try d.u32(0x40))
    }
}
